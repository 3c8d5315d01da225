"""The one error every dataset reader raises: a single line naming the file and the field."""

from __future__ import annotations

from pathlib import Path


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class DataError(ValueError):
    """A dataset file failed a boundary check.

    The message is one line, ``"{file}: {field} {problem}"``, e.g.
    ``/x/mosei/unaligned_50.pkl: train.audio_lengths[3]=612 exceeds audio length 500``.
    ``file``, ``field`` and ``problem`` stay available as attributes for callers that sort errors.
    """

    def __init__(self, file: str | Path, field: str = "", problem: str = ""):
        self.file = str(file)
        self.field = _one_line(field)
        self.problem = _one_line(problem)
        # "train.audio_lengths[3]" + "=612 exceeds ..." reads better without a space
        sep = "" if self.problem[:1] in ("=", "[") else " "
        detail = f"{self.field}{sep}{self.problem}" if self.field else self.problem
        super().__init__(_one_line(f"{self.file}: {detail}"))

    def __reduce__(self):  # keep the three-part constructor across pickling (multiprocessing)
        return (type(self), (self.file, self.field, self.problem))
