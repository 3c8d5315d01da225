"""Check the paper profile's model and data roots once, before a grid trains anything.

Every backbone and dataset the grid's cells need is checked once per process: files present and
not Git LFS pointer stubs, ``config.json`` of the named architecture, the tokenizer loadable,
the dataset's form detectable. The first problem is a one-line ValueError (the CLI prints
``error: ...`` and exits 2) raised before a run is started or a file written under results/,
so a clone without ``git lfs pull`` never turns into one failed run after another. Loading the
weights and the full dataset is left to the runs (too slow to do twice).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from benchmarks.execution.profiles import resolve_run_config

_CHECKED: set[tuple] = set()  # (kind, path, ...) already checked in this process


class PreflightError(ValueError):
    """A root holds something a run would fail on; the message is one line naming the file."""


def check_model_dir(model_dir: Path, backbone: str, trust_remote_code: bool) -> None:
    """A backbone's weights directory: no LFS stubs, the right architecture, a loadable tokenizer."""
    from egmf_core.backbones import (
        check_architecture,
        check_no_lfs_pointers,
        family_of,
        load_tokenizer,
        read_model_type,
    )
    from egmf_core.lfs import WEIGHT_SUFFIXES

    check_no_lfs_pointers(model_dir)
    model_type = read_model_type(model_dir)
    check_architecture(family_of(backbone), model_dir, model_type, trust_remote_code)
    if not any(p.suffix in WEIGHT_SUFFIXES for p in model_dir.iterdir()):
        raise PreflightError(f"{model_dir}: no weight files ({', '.join('*' + s for s in WEIGHT_SUFFIXES)})")
    load_tokenizer(model_dir, model_type, trust_remote_code)


def check_dataset(name: str, root: Path) -> None:
    """A dataset under the data root: its form detected, the files it names not LFS stubs."""
    from egmf_core.data import detect_format, find_dataset_folder
    from egmf_core.lfs import folder_lfs_pointer, is_lfs_pointer, lfs_pointer_message

    folder = find_dataset_folder(name, root) or root
    _, path = detect_format(name, folder)
    pointer = folder_lfs_pointer(folder) or (path if is_lfs_pointer(path) else None)
    if pointer is not None:
        raise PreflightError(lfs_pointer_message(pointer))


def preflight(cells: Iterable, *, data_root=None, model_root=None) -> list[str]:
    """Check what the paper-profile ``cells`` need (each thing once); return what was checked."""
    checked = []
    for cell in cells:
        cfg = resolve_run_config(cell.config, data_root=data_root, model_root=model_root)
        items = [("data", cfg.data.name, cfg.data.root)]
        if cfg.model.model_path:
            items.append(("model", cfg.model.backbone, cfg.model.model_path, cfg.model.trust_remote_code))
        for item in items:
            if item in _CHECKED:
                continue
            if item[0] == "data":
                check_dataset(item[1], Path(item[2]))
            else:
                check_model_dir(Path(item[2]), item[1], item[3])
            _CHECKED.add(item)
            checked.append(f"{item[1]}: {item[2]}")
    return checked
