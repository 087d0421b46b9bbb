

def compile_flags() -> str:
    """This process's XLA_FLAGS less the host device count: the suite's compile flags (conftest.py)
    for a subprocess that sets its own device count."""
    import os

    return " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f)
