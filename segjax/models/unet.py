"""Placeholder: filled in by the models work (issue 3)."""
