"""Shared types of rsign: the leaf every other package may import, and which imports nothing of
rsign itself (enforced by the import contract in ``.importlinter``).

algorithms (digest checks, mechanism choice), principal and roles, audit event types, the plain
records handed out by the store, errors, clock, request context, the permission policy.
"""
