"""Draw a validation split from train for a release that ships train and test only (CHERMA).

    python -m egmf_core.data.split cherma ROOT --valid-fraction 0.1 --seed 0

Reads the train split (CHERMA's ``train.json`` release or MSE-Adapter's ``cherma_train.pkl``),
draws ``round(fraction * n)`` samples of each label with ``seed`` and writes
``<dataset folder>/valid_split.json``: seed, fraction, the train file's sha256, the chosen
indices, ids and labels and the split's own sha256. No data file is changed; ``load_dataset``
carves the split from train by this manifest. Same data, fraction and seed: same bytes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..atomic import atomic_write_bytes
from . import dataset_folder
from . import validate as v
from .checksums import sha256_file
from .cherma_json import read_split as read_json_split
from .dataset import SPECS, DatasetSpec, Split
from .errors import DataError
from .mmsa_pickle import split_from_arrays
from .mse_adapter_pickle import holds_processed, split_arrays, split_file
from .safe_pickle import load_pickle
from .valid_split import MANIFEST_NAME, make_manifest

UNSPLIT_DATASETS = ("cherma",)  # the releases without a validation split


def read_train(folder: Path, spec: DatasetSpec) -> tuple[Path, Split]:
    """(train file, train split) of the release in ``folder``; refuses one that has a validation split."""
    if holds_processed(folder, spec.name):
        path, valid = split_file(folder, spec.name, "train"), split_file(folder, spec.name, "valid")
        if valid.is_file():
            raise DataError(valid, "", "exists: this release has a validation split already")
        arrays = split_arrays(load_pickle(path), path, "train", spec)
        return path, split_from_arrays(arrays, spec, path, "train", v.new_cleaning())
    path = folder / "train.json"
    if not path.is_file():
        raise DataError(folder, "", f"neither {split_file(folder, spec.name, 'train').name} nor train.json "
                                    "found (layouts in egmf_core/data/README.md)")
    for name in ("valid.json", "dev.json"):
        if (folder / name).is_file():
            raise DataError(folder / name, "", "exists: this release has a validation split already")
    return path, read_json_split(folder, "train", "train", path, spec, {}, v.new_cleaning())


def write_valid_split(name: str, root: str | Path, fraction: float, seed: int) -> tuple[Path, dict]:
    """Draw the split and write ``valid_split.json`` atomically; return (its path, the manifest)."""
    spec = SPECS[name]
    folder = dataset_folder(name, root)
    train_file, train = read_train(folder, spec)
    manifest = make_manifest(spec, train, train_file, sha256_file(train_file), fraction, seed)
    path = folder / MANIFEST_NAME
    text = json.dumps(manifest, ensure_ascii=False, indent=1) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))
    return path, manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m egmf_core.data.split", description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=UNSPLIT_DATASETS)
    parser.add_argument("root", type=Path, help="the data root (holding cherma/ or CHERMA0723/) or the dataset folder")
    parser.add_argument("--valid-fraction", type=float, default=0.1, help="share of each label moved (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="draw seed (default 0)")
    args = parser.parse_args(argv)
    try:
        path, manifest = write_valid_split(args.dataset, args.root, args.valid_fraction, args.seed)
    except ValueError as err:  # DataError, or a fraction outside (0, 1)
        parser.exit(2, f"error: {' '.join(str(err).split())}\n")
    print(f"{path}: {len(manifest['valid_indices'])} of {manifest['n_train_source']} train samples form valid "
          f"(seed {manifest['seed']}, sha256 {manifest['valid_sha256'][:12]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
