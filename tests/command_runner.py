"""Runs a `python -m experiments.<command>` in the test process, as its `__main__` would.

`run_command("experiments.predict", ["--run=...", ...])` executes the module as `__main__`
(`runpy`, with `sys.argv` set) and returns `(exit_code, stdout, stderr)`. The command's flags are
defined into absl's global FLAGS by its `define_flags()`; they are removed again afterwards, so
that the next command can define its own (several commands share flag names). Flags that a
library defines when the command first imports it (TensorFlow, orbax, array_record) stay: the
library reads them later and is imported only once. Much cheaper than
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
    program = module.replace(".", "/") + ".py"
    sys.argv = [program, *args]
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
            owner = flags.FLAGS.find_module_defining_flag(name) or ""
            # The command's own flags (defined by its __main__, which absl names after argv[0],
            # or by an experiments module) and config_flags' `--config.KEY` overrides.
            if owner == program or owner.startswith(("experiments", "absl.flags",
                                                     "ml_collections")):
                with contextlib.suppress(AttributeError):
                    delattr(flags.FLAGS, name)
        flags.FLAGS.unparse_flags()
    return code, out.getvalue(), err.getvalue()
