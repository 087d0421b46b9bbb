

def compile_flags() -> str:
    """This process's XLA_FLAGS less the host device count: the suite's compile flags (conftest.py)
    for a subprocess that sets its own device count."""
    import os

    return " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f)


def compile_cache_env(cache_dir) -> dict[str, str]:
    """Environment variables that make every process given them share one persistent JAX
    compilation cache in `cache_dir`, caching every executable: later processes of a test
    reuse the first one's executables instead of compiling them again."""
    return {"JAX_COMPILATION_CACHE_DIR": str(cache_dir),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
