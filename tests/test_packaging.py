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
