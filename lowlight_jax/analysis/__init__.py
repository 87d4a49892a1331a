"""Inspection helpers behind the notebooks (one module per method)."""
