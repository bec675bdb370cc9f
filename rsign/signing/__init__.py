"""Signing domain: digest validation, mechanism selection, single and batch signing."""
