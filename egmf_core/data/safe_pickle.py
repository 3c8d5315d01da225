"""Read the field's feature pickles without running code: numpy arrays and builtin containers only.

Unpickling calls whatever global a file names (``os.system`` included), so the processed
MOSEI / SIMS-V2 / MELD / CHERMA pickles are read through :class:`NumpyOnlyUnpickler`, which
admits only the globals numpy needs to rebuild arrays, dtypes and scalars (numpy 1.x and 2.x
spellings, pickle protocols 2-5) plus builtin containers. Anything else is refused with a
:class:`DataError` naming the file and the refused ``module.name``, before it is called.
"""

from __future__ import annotations

import _codecs
import builtins
import collections
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ..lfs import is_lfs_pointer, lfs_pointer_problem
from .errors import DataError

try:  # numpy >= 2 keeps its internals in numpy._core; numpy 1.x pickles still name numpy.core
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Protocol 2 writes bytes as ``_codecs.encode(str, 'latin1')``; admit exactly that use."""
    if encoding not in ("latin1", "latin-1", "iso-8859-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not admitted")
    return _codecs.encode(text, "latin1", errors)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = _multiarray._reconstruct
        allowed[(module, "scalar")] = _multiarray.scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = _numeric._frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    dtypes = getattr(np, "dtypes", None)
    for name in dir(dtypes) if dtypes is not None else ():
        cls = getattr(dtypes, name)
        if isinstance(cls, type) and issubclass(cls, np.dtype):
            allowed[("numpy.dtypes", name)] = cls
    for name in ("dict", "list", "tuple", "set", "frozenset", "bytes", "bytearray",
                 "str", "int", "float", "complex", "bool", "slice", "range"):
        allowed[("builtins", name)] = getattr(builtins, name)
        allowed[("__builtin__", name)] = getattr(builtins, name)  # protocol 0-2 from Python 2
    allowed[("collections", "OrderedDict")] = collections.OrderedDict
    allowed[("_codecs", "encode")] = _latin1_encode
    return allowed


ALLOWED_GLOBALS = _allowed_globals()


class RefusedGlobal(pickle.UnpicklingError):
    """Raised inside the unpickler; :func:`load_pickle` turns it into a DataError."""

    def __init__(self, qualified_name: str):
        super().__init__(qualified_name)
        self.qualified_name = qualified_name


class NumpyOnlyUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` that resolves only numpy array globals and builtin containers."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not admitted")


def load_pickle(path: str | Path) -> Any:
    """Unpickle ``path`` with :class:`NumpyOnlyUnpickler`; every failure is a one-line DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "", "file does not exist")
    if is_lfs_pointer(path):
        raise DataError(path, "", lfs_pointer_problem(path))
    try:
        with open(path, "rb") as handle:
            return NumpyOnlyUnpickler(handle).load()
    except RefusedGlobal as err:
        raise DataError(path, "global", f"{err.qualified_name} refused (only numpy arrays and "
                                        "builtin containers may be unpickled)") from None
    except MemoryError:
        raise
    except Exception as err:  # EOFError, UnpicklingError, ValueError from truncated or corrupt data
        kind = "truncated" if isinstance(err, EOFError) or "truncated" in str(err) else "corrupt"
        raise DataError(path, "", f"{kind} pickle ({type(err).__name__}: {err})") from None
