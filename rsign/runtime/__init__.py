"""Composition root: settings and the assembled services (App), for the transports and tools above."""
