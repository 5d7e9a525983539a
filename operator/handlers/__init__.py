"""Thin kopf handlers: read, call the pure builders, create-or-adopt children, patch status."""
