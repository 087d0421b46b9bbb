"""Command-line tools (e.g. torchvision weight conversion)."""
