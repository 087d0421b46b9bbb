"""Benchmarks: print tables (and JSON lines); they never import TensorFlow unless they time the input pipeline."""
