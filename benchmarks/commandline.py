"""What the command lines share: a parser whose bad usage is a one-line ``error:``, never a usage
dump; errors on one line; and the offline, quiet process setup."""

from __future__ import annotations

import argparse
import os
import warnings

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
# transformers' own "Loading weights" bars would break the one-line error and our progress bars.
QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def offline_and_quiet() -> None:
    """What every harness process sets first (the CLI's and each --jobs worker's): the Hugging
    Face libraries offline, their progress bars off unless asked for, and a warning that is not
    ours (peft calls a transformers 5 API that warns about its own deprecation on every model)."""
    os.environ.update(OFFLINE_ENV)
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


class UsageError(ValueError):
    """Bad command-line usage (argparse's complaints, in one line)."""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise UsageError; the entry point prints it and exits 2."""

    def error(self, message: str):
        raise UsageError(message)


def one_line(text: object, limit: int = 500) -> str:
    """``text`` on one line (whitespace runs collapsed), at most ``limit`` characters: how errors
    reach stderr, run files and reports."""
    return " ".join(str(text).split())[:limit]


def error_line(e: BaseException) -> str:
    """An error as the command lines print it after ``error:``: one line, naming the file of an
    OSError when its message does not."""
    if isinstance(e, OSError) and e.filename is not None and str(e.filename) not in str(e):
        return f"{e.filename}: {e.strerror or e}"
    return one_line(e, limit=10_000) or type(e).__name__


def progress_bars_setting() -> bool | None:
    """``RunOptions.progress_bars`` as a command line sets it: off with ``$EGMF_NO_PROGRESS=1``
    (CI), else None (drawn when stderr is a terminal). Read here, at the process boundary only."""
    return False if os.environ.get("EGMF_NO_PROGRESS") == "1" else None
