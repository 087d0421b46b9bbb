"""Every command refuses bad input cleanly (DESIGN §4 "Clear failures", issue 29).

For each `python -m experiments...` command, given a wrong or missing run directory, a run of the
wrong task, an unreadable image, too few images, a bad flag value or a missing flag: exit status
1, the last line on stderr is one `error: ...` line naming the flag / file / run and what is
wrong, no traceback, and the output directory (`--workdir`) is not created.

The commands run in this process (`tests.command_runner`: runpy as `__main__`, absl flags
removed between commands), so the whole table costs seconds; one case also runs as a real
subprocess, as a user runs it.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.command_runner import run_command

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SMALL = os.path.join(REPO, "experiments", "configs", "unet_shapes.py") + ":small"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A semantic run's directory holding only its config.json (commands that need another
    task's run must refuse it from that file alone, before restoring anything), a run dir with
    a corrupt config.json, an empty "image", a text file named .png, a report.json with NaN and
    one lacking keys."""
    from experiments.configs import unet_shapes

    root = tmp_path_factory.mktemp("bad_inputs")
    semantic = root / "semantic_run"
    semantic.mkdir()
    (semantic / "config.json").write_text(unet_shapes.get_config("small").to_json())
    corrupt = root / "corrupt_run"
    corrupt.mkdir()
    (corrupt / "config.json").write_text('{"task": "oracle", ')
    (root / "empty.png").write_bytes(b"")
    (root / "text.png").write_text("not an image")
    nan_report = root / "nan_report"
    nan_report.mkdir()
    (nan_report / "report.json").write_text('{"num_images": NaN}')
    partial = root / "partial_report"
    partial.mkdir()
    (partial / "report.json").write_text(json.dumps({"num_images": 4, "seed": 0}))
    return {"root": str(root), "semantic": str(semantic), "corrupt": str(corrupt),
            "empty_png": str(root / "empty.png"), "text_png": str(root / "text.png"),
            "nan_report": str(nan_report), "partial_report": str(partial),
            "missing": str(root / "no_such_run")}


# (command, arguments (`{W}` = the work dir, `{name}` = files[name]), words the error must hold)
CASES = [
    ("experiments.train", ["--workdir={W}"], ["--config"]),
    ("experiments.train", ["--workdir={W}", "--config={root}/nope.py"], ["nope.py", "not found"]),
    ("experiments.train", ["--workdir={W}", f"--config={SMALL}", "--config.batch_size=0"],
     ["config.batch_size", "0"]),
    ("experiments.train", ["--workdir={W}", f"--config={SMALL}", "--config.nokey=1"],
     ["nokey"]),
    ("experiments.train", ["--workdir={W}", f"--config={SMALL}", "--config.seed=abc"],
     ["seed", "abc"]),
    ("experiments.deeplab_voc", [], ["--workdir"]),
    ("experiments.predict", ["--run={missing}", "--images={text_png}", "--workdir={W}"],
     ["text.png"]),  # the images are checked first
    ("experiments.predict", ["--run={semantic}", "--images={empty_png}", "--workdir={W}"],
     ["empty.png", "cannot read image"]),
    ("experiments.predict", ["--run={semantic}", "--images={root}/*.jpg", "--workdir={W}"],
     ["--images", "*.jpg"]),
    ("experiments.predict", ["--run={missing}", "--images={text_png}"], ["--workdir"]),
    ("experiments.oracle_refine", ["--oracle={semantic}", "--workdir={W}"],
     ["--oracle=", "semantic_run", "'semantic' run", "'oracle'"]),
    ("experiments.oracle_refine", ["--oracle={missing}", "--workdir={W}"],
     ["no_such_run", "config.json"]),
    ("experiments.oracle_refine", ["--oracle={corrupt}", "--workdir={W}"],
     ["corrupt_run/config.json", "not readable JSON"]),
    ("experiments.oracle_refine", ["--oracle={semantic}", "--workdir={W}", "--num_images=1"],
     ["--num_images=1", "at least 2"]),
    ("experiments.oracle_refine", ["--oracle={semantic}", "--workdir={W}", "--step_size=nan"],
     ["--step_size=nan"]),
    ("experiments.oracle_refine", ["--oracle={semantic}", "--workdir={W}", "--batch=0"],
     ["--batch=0"]),
    ("experiments.oracle_refine", ["--oracle={semantic}", "--workdir={W}", "--nofrom_zeros"],
     ["--nofrom_zeros", "--segmenter"]),
    ("experiments.oracle_seeds", ["--reports={missing}", "--workdir={W}"],
     ["no_such_run/report.json", "does not exist"]),
    ("experiments.oracle_seeds", ["--reports={nan_report}", "--workdir={W}"],
     ["nan_report/report.json", "NaN"]),
    ("experiments.oracle_seeds", ["--reports={partial_report}", "--workdir={W}"],
     ["partial_report/report.json", "num_select"]),
    ("experiments.fewshot_eval", ["--run={semantic}", "--workdir={W}"],
     ["--run=", "'semantic' run", "'fewshot'"]),
    ("experiments.fewshot_eval", ["--workdir={W}"], ["--run"]),
    ("experiments.embedding_eval", ["--run={semantic}", "--workdir={W}"],
     ["--run=", "'semantic' run", "'embedding'"]),
    ("experiments.embedding_eval", ["--run={semantic}", "--workdir={W}",
                                    "--clusterings=threshold:radius"], ["radius"]),
    ("experiments.ablate", ["--workdir={W}"], ["--base"]),
    ("experiments.ablate", ["--workdir={W}", f"--base={SMALL}", "--sweep=nokey=1,2",
                            "--seeds=0"], ["nokey"]),
    ("experiments.ablate", ["--workdir={W}", f"--base={SMALL}", "--sweep=seed=1,2",
                            "--seeds=0,x"], ["--seeds", "0,x"]),
    # A bad value in the sweep's last cell is refused before the first cell trains.
    ("experiments.ablate", ["--workdir={W}", f"--base={SMALL}", "--seeds=0",
                            "--sweep=optimizer.momentum=0.5,1.5"],
     ["sweep cell optimizer.momentum=1.5", "config.optimizer.momentum=1.5"]),
    ("experiments.ablate", ["--workdir={W}", f"--base={SMALL}", "--seeds=0",
                            "--sweep=seed=1,2", "--baseline=nokey=1"], ["nokey"]),
    ("experiments.lectures", ["--workdir={W}", "--figures=99"], ["--figures", "99"]),
    ("experiments.lectures", ["--workdir={empty_png}/figures", "--figures=1"],
     ["NotADirectoryError", "empty.png/figures"]),
    ("experiments.classical", ["--workdir={W}", "--dataset=nope"], ["nope"]),
    ("experiments.classical", ["--workdir={W}", "--num_images=0"], ["--num_images=0"]),
    ("experiments.classical", ["--workdir={W}", "--num_images=many"], ["--num_images", "many"]),
    ("experiments.benchmarks.train_step", ["--model=bogus", "--size=8", "--batch=1"],
     ["bogus"]),
    ("experiments.benchmarks.scaling", ["--overrides=notjson", "--interconnect=eth100",
                                        "--step_time_s=0.1"], ["--overrides", "notjson"]),
    ("experiments.benchmarks.scaling", ["--interconnect=bogus"], ["--interconnect", "bogus"]),
    ("experiments.benchmarks.swap_align2nat", ["--windows=0"], ["--windows", "0"]),
]


def _ids():
    seen = {}
    out = []
    for module, args, _ in CASES:
        name = module.rsplit(".", 1)[1]
        seen[name] = seen.get(name, 0) + 1
        out.append(f"{name}-{seen[name]}")
    return out


@pytest.mark.parametrize("module,args,words", CASES, ids=_ids())
def test_command_fails_with_one_error_line(files, tmp_path, module, args, words):
    workdir = tmp_path / "out"
    argv = [a.format(W=workdir, **files) for a in args]
    words = [w.format(**files) for w in words]
    code, _, err = run_command(module, argv)  # a traceback would raise here
    lines = err.strip().splitlines()
    assert code == 1, err
    assert lines and lines[-1].startswith("error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[-1], (word, lines[-1])
    assert not workdir.exists(), f"{module} created {workdir} before failing"
    assert sorted(os.listdir(files["root"])) == sorted(
        ["semantic_run", "corrupt_run", "empty.png", "text.png", "nan_report",
         "partial_report"]), "a command wrote next to its inputs"
    assert os.listdir(files["semantic"]) == ["config.json"]


def test_a_real_process_ends_with_one_error_line(files, tmp_path):
    """As a user runs it: no traceback and no log noise after the error line, exit status 1."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.oracle_refine", f"--oracle={files['semantic']}",
         f"--workdir={out}", "--num_images=1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: ValueError: --num_images=1: need at least 2 images (the even indices choose the "
        "step, the odd ones are reported; one image leaves a half empty)")
    assert "Traceback" not in proc.stderr and not out.exists()
