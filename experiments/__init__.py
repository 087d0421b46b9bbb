"""Command-line experiments: training, prediction, ablations and benchmarks."""
