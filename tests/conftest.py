"""Shared test set-up: 4 host CPU devices (set before JAX is imported) and common fixtures."""
import os

# Must happen before `import jax` anywhere in the test session.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["JAX_NUM_CPU_DEVICES"] = "4"
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    _flags = (_flags + " --xla_force_host_platform_device_count=4").strip()
# Compiling, not running, is most of this suite's time on CPU, and most of compiling is LLVM. Its
# optimisation level 0 without the expensive passes takes a third off the suite (measured on 2
# cores: 1515 s against 2330 s at the defaults); XLA's HLO passes (fusion, layout, the emitters)
# are unchanged. The rounding moves (median 1.5e-4 relative per gradient leaf of U-Net, DeepLab v3
# and PSPNet through train-mode BatchNorm, within every tolerance against torch), and every bitwise
# claim here (exact resume, determinism) compares runs compiled under the same flags (subprocesses
# that copy the environment inherit them). A gradient that needs the backward's recomputed input to
# equal the forward's bit for bit fails here: this found `max_pool_2x2x2`'s 0 / 0 (layers3d.py).
# `SEGJAX_TEST_XLA_OPT=default` runs the suite at XLA's defaults.
if os.environ.get("SEGJAX_TEST_XLA_OPT", "fast") == "fast" and "xla_backend_optimization_level" not in _flags:
    _flags += " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = _flags
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The torch/torchvision references must be imported before TensorFlow: torchvision pulls in
# torch._dynamo -> triton, and loading libtriton after TensorFlow's libraries segfaults the
# interpreter (measured: `import tensorflow; import torchvision` crashes, the reverse works).
# segjax itself never imports torch, so only the test process needs this ordering.
try:
    import torchvision  # noqa: E402,F401
except ImportError:  # the reference tests will fail with a clear ImportError instead
    pass

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

# Property-based tests (Hypothesis). CI runs the "ci" profile: derandomised (the same examples on
# every run and machine) with a small example budget, so a failure reproduces and the suite's time
# is fixed. Long local hunts: `pytest --hypothesis-profile=hunt` (random seeds, 1000
# examples per property). A failing example is printed and can be pinned with @example(...).
try:
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "ci", derandomize=True, max_examples=25, deadline=None, print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        database=None)
    settings.register_profile(
        "hunt", max_examples=1000, deadline=None, print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    settings.load_profile(os.environ.get("SEGJAX_HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # the property tests fail with a clear ImportError instead
    pass


@pytest.fixture
def np_rng(request):
    """A numpy Generator seeded from the test's name: fresh per test, reproducible per test."""
    import zlib

    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)


def pytest_report_header(config):
    return f"jax {jax.__version__}, devices: {jax.devices()}"
