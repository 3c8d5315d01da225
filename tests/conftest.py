"""Shared fixtures: tiny in-memory datasets and tiny model configs (no files, no network)."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from benchmarks.execution import numerics  # noqa: E402

numerics.pin()  # ATen / MKL / oneDNN kernel pins, before torch's first op (EGMF_NUMERICS=native opts out)

import torch  # noqa: E402

numerics.pin_kernels()  # exact CPU sqrt, as the harness's run function does (pinned mode only)
torch.set_num_threads(1)  # tiny matrices: one thread is fastest and immune to CPU contention

from egmf_core.config import ModelConfig, TrainConfig  # noqa: E402
from egmf_core.data.dataset import SPECS, MultimodalDataset, Split  # noqa: E402

CUES_EN = ["calm", "wow", "scared", "tears", "smile", "gross", "furious"]


def make_split(n: int, spec_name: str = "meld", *, seed: int = 0, d_a: int = 6, d_v: int = 5,
               L_a: int = 7, L_v: int = 5) -> Split:
    """A split whose text names the class with a cue word; audio carries the class too."""
    rng = np.random.default_rng(seed)
    spec = SPECS[spec_name]
    if spec.task == "classification":
        labels = rng.integers(0, len(spec.labels), n).astype(np.int64)
        text = [f"the speaker says {CUES_EN[y % len(CUES_EN)]} now" for y in labels]
        signal = labels.astype(np.float32)
    else:
        lo, hi = spec.label_range
        labels = np.round(rng.uniform(lo, hi, n), 1).astype(np.float32)
        text = [f"it was {'good' if y > 0 else 'bad'} {abs(y):.1f}" for y in labels]
        signal = labels
    a_len = rng.integers(2, L_a + 1, n)
    v_len = rng.integers(2, L_v + 1, n)
    audio = np.zeros((n, L_a, d_a), np.float32)
    vision = np.zeros((n, L_v, d_v), np.float32)
    for i in range(n):
        audio[i, : a_len[i]] = rng.normal(size=(a_len[i], d_a)) * 0.5 + signal[i]
        vision[i, : v_len[i]] = rng.normal(size=(v_len[i], d_v))
    return Split(ids=[f"s{i}" for i in range(n)], text=text, audio=audio, audio_lengths=a_len.astype(np.int64),
                 vision=vision, vision_lengths=v_len.astype(np.int64), labels=labels)


def make_dataset(spec_name: str = "meld", n_train: int = 32, n_eval: int = 16, seed: int = 0) -> MultimodalDataset:
    return MultimodalDataset(
        spec=SPECS[spec_name],
        train=make_split(n_train, spec_name, seed=seed),
        valid=make_split(n_eval, spec_name, seed=seed + 1),
        test=make_split(n_eval, spec_name, seed=seed + 2),
        source="in-memory test data",
    )


def tiny_model_config(**overrides) -> ModelConfig:
    base = dict(backbone="llama3-tiny", d_h=32, fusion_heads=4, dropout=0.0, n_tokens=2)
    base.update(overrides)
    return ModelConfig(**base)


def tiny_train_config(**overrides) -> TrainConfig:
    base = dict(lr=2e-3, fusion_lr=2e-3, batch_size=8, eval_batch_size=16, max_steps=10, eval_every=5,
                patience=5, warmup_ratio=0.0)
    base.update(overrides)
    return TrainConfig(**base)


@pytest.fixture
def meld_dataset() -> MultimodalDataset:
    return make_dataset("meld")


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if anything opens an internet socket."""
    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1")):
            return real_connect(self, address)
        raise AssertionError(f"a test opened a network connection to {address!r}")

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setattr(socket, "create_connection",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError(f"network connection to {a[0]!r}")))
    yield


def isolate_harness(tmp_path, monkeypatch) -> list[str]:
    """Point the smoke profile's repo root at tmp, fake its data writer, clear the roots' env vars,
    work in tmp. Returns the names of the datasets the fake writer wrote, in order."""
    from benchmarks.execution import profiles
    from tests.fakes import fake_dataset_writer

    written: list[str] = []

    def fake_writer(name, out_dir, *, seed, size):
        written.append(name)
        return fake_dataset_writer(name, out_dir, seed=seed, size=size)

    monkeypatch.setattr(profiles, "REPO_ROOT", tmp_path / "repo")
    monkeypatch.setattr(profiles, "write_synthetic_dataset", fake_writer)
    monkeypatch.delenv("EGMF_DATA_ROOT", raising=False)
    monkeypatch.delenv("EGMF_MODEL_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    return written
