"""Loading a full-size synthetic CMU-MOSEI (16,326 / 1,871 / 4,659 samples, lengths 50 / 500 / 375).

The twin is written once per session into a temporary cache directory (about 7.6 GB, some 40 s;
deleted at the end of the session), then ``load_dataset`` reads it through the MMSA pickle loader
with its validation at the boundary. Peak memory is about twice the arrays' size.
"""

from __future__ import annotations

import gc
import shutil
import tempfile
from pathlib import Path

import pytest

ROUNDS = 2


@pytest.fixture(scope="session")
def full_mosei_root():
    from egmf_core.data.synth import write_synthetic

    root = Path(tempfile.mkdtemp(prefix="egmf-bench-mosei-"))
    try:
        write_synthetic("mosei", root, seed=0, full=True)
        gc.collect()
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_load_full_size_mosei(benchmark, full_mosei_root):
    from egmf_core.data import load_dataset

    sizes = {}

    def load():
        data = load_dataset("mosei", full_mosei_root)
        sizes.update(train=len(data.train), valid=len(data.valid), test=len(data.test),
                     audio=tuple(data.train.audio.shape), vision=tuple(data.train.vision.shape))
        del data  # free the arrays before the next round: two copies would double the peak memory

    benchmark.pedantic(load, rounds=ROUNDS, iterations=1, warmup_rounds=0, setup=gc.collect)
    on_disk = sum(p.stat().st_size for p in full_mosei_root.rglob("*") if p.is_file())
    benchmark.extra_info.update(bytes_on_disk=on_disk, **{k: str(v) for k, v in sizes.items()})
    assert (sizes["train"], sizes["valid"], sizes["test"]) == (16326, 1871, 4659)
    assert sizes["audio"][1:] == (500, 74) and sizes["vision"][1:] == (375, 35)
