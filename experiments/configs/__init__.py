"""Experiment configs (ml_collections): `file.py:preset`."""
