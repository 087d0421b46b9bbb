"""requirements.txt and setup.cfg list the same runtime dependencies; segjax never imports torch."""

import configparser
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _requirements():
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return sorted(l.strip() for l in lines if l.strip() and not l.startswith("#"))


def test_setup_cfg_matches_requirements():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    install = [l.strip() for l in cfg["options"]["install_requires"].splitlines() if l.strip()]
    assert sorted(install) == _requirements()


def test_every_runtime_requirement_is_bounded():
    for req in _requirements():
        assert ("<" in req and ">=" in req) or "==" in req, f"unbounded requirement: {req}"


def test_importing_segjax_does_not_import_torch_or_tensorflow():
    code = (
        "import sys, segjax, segjax.ops, segjax.models; segjax.models.available_models();"
        "bad = [m for m in ('torch', 'torchvision', 'tensorflow') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_importing_every_experiments_command_defines_no_flag():
    """Commands define their absl flags under `__main__` only (`define_flags()`): absl flags are
    process-global, so two commands imported by one test process (predict and oracle_refine both
    had --workdir) would otherwise collide. Imports every experiments module in one process."""
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in list((ROOT / "experiments").glob("*.py")) + list((ROOT / "experiments" / "benchmarks").glob("*.py"))
        if p.name != "__init__.py")
    assert "experiments.predict" in modules and "experiments.oracle_refine" in modules
    code = (
        "import importlib\n"
        "from absl import flags\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "owners = {k: sorted(f.name for f in v) for k, v in flags.FLAGS.flags_by_module_dict().items()}\n"
        "ours = {k: v for k, v in owners.items() if k.startswith('experiments')}\n"
        "assert 'absl.logging' in owners and not ours, ours\n"
        "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
