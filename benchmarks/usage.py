"""The command lines' argument parser: bad usage is a one-line ``error:``, never a usage dump."""

from __future__ import annotations

import argparse


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
