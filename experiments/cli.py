"""The preamble every `python -m experiments.<command>` shares.

* TensorFlow's C++ log noise is silenced before anything imports TensorFlow, and absl logging
  (orbax logs every save at INFO) is at WARNING unless `--verbosity` is given;
* a known failure (a bad flag value, a missing file or dataset, an incompatible work dir, a NaN
  loss: `KNOWN_ERRORS`; a flag that does not parse or a missing required flag; an
  `app.UsageError`) ends the command with one line `error: ...` on stderr (the last line it
  writes there) and exit status 1; anything else is a bug and keeps its traceback;
* flags are defined by the command's `define_flags()`, called only under `__main__`, so that
  importing two commands in one process (tests do) cannot collide on a flag name.

Conventions (DESIGN §2): `--workdir` is always the directory a command writes; a trained run
being read is always `--run` (comma-separated where a command reads several).

Example:
  >>> if __name__ == "__main__":
  ...     cli.run(main, define_flags)
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS


def known_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "the input is wrong", not "segjax is wrong"."""
    from segjax.train.loop import KNOWN_ERRORS

    # A --workdir that cannot be created or written (under a file, no permission) is the
    # user's to fix, like a missing file; the message names the path.
    return KNOWN_ERRORS + (PermissionError, NotADirectoryError, IsADirectoryError,
                           FileExistsError)


def fail(message: str) -> None:
    """Prints `error: message` to stderr and exits with status 1."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def no_arguments(argv: Sequence[str]) -> None:
    """Refuses positional arguments (everything is a flag)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {list(argv[1:])}")


def runs(value: str | Sequence[str]) -> list[str]:
    """The run directories of a `--run=A,B,...` flag value."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return [d.strip() for d in items if d.strip()]


def one_line(message: str) -> str:
    """`message` on one line (an `error: ...` line is the last line a failed command writes)."""
    return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with one `error:` line (not absl's usage text) for a flag that does not
    parse or a required flag that is missing."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        fail(f"{one_line(e)} (pass --helpfull to see the flags)")


def check_run_task(flag: str, run_dir: str, task: str) -> None:
    """Refuses `--flag=run_dir` by name unless it is a run of `task`, read from its config.json
    alone: before anything is restored or written.

    Raises:
      ValueError: a run of another task (named); FileNotFoundError: not a run (no config.json).
    """
    from segjax.train.restore import run_task

    found = run_task(run_dir)
    if found != task:
        raise ValueError(f"--{flag}={run_dir} is a {found!r} run, not a {task!r} run")


def _guarded(main: Callable[[list[str]], object]) -> Callable[[list[str]], object]:
    def wrapped(argv):
        if not FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
        try:
            return main(argv)
        except app.UsageError as e:
            fail(one_line(e))
        except known_errors() as e:
            fail(one_line(f"{type(e).__name__}: {e}"))

    return wrapped


def run(main: Callable[[list[str]], object], define_flags: Callable[[], None], *,
        argv: list[str] | None = None,
        flags_parser: Callable[[list[str]], list[str]] | None = None) -> None:
    """Defines the command's flags and runs `main` with the shared preamble (module doc);
    `argv` and `flags_parser` as `absl.app.run`'s."""
    define_flags()
    app.run(_guarded(main), argv=argv, flags_parser=flags_parser or parse_flags)
