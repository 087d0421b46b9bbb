"""Runs a `python -m experiments.<command>` in the test process, as its `__main__` would.

`run_command("experiments.predict", ["--run=...", ...])` executes the module as `__main__`
(`runpy`, with `sys.argv` set) and returns `(exit_code, stdout, stderr)`. The command's flags are
defined into absl's global FLAGS by its `define_flags()`; they are removed again afterwards, so
that the next command can define its own (several commands share flag names). Much cheaper than
a subprocess per command (no second import of JAX/TensorFlow), and a traceback shows up as the
exception itself instead of text to grep.
"""

from __future__ import annotations

import contextlib
import io
import runpy
import sys
import warnings

from absl import app, flags


def run_command(module: str, args: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `python -m module *args`, run in this process.

    An exception other than SystemExit propagates (it is what a user would see as a traceback).
    """
    app.define_help_flags()  # absl defines these on its first run only: keep them
    before = set(flags.FLAGS)
    out, err = io.StringIO(), io.StringIO()
    old_argv = sys.argv
    sys.argv = [module.replace(".", "/") + ".py", *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # runpy: module already imported
            try:
                runpy.run_module(module, run_name="__main__", alter_sys=False)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old_argv
        for name in set(flags.FLAGS) - before:
            with contextlib.suppress(AttributeError):
                delattr(flags.FLAGS, name)
        flags.FLAGS.unparse_flags()
    return code, out.getvalue(), err.getvalue()
