"""Checkpoints: atomic writes, exact mid-run resumption, untrusted checkpoints ignored, safe loading."""

from __future__ import annotations

import ast
import errno
import json
import os
from pathlib import Path

import pytest
import torch

from egmf_core import checkpoint as ck
from egmf_core.atomic import AtomicWriteError, atomic_write_bytes
from egmf_core.checkpoint import Checkpointer, CheckpointError, FitState
from egmf_core.paths import REPO_ROOT

REPO = REPO_ROOT


class Stop(Exception):
    """Raised from a progress callback: the process 'dies' after that step."""


# ---- atomic writes --------------------------------------------------------------------------------

def test_atomic_write_replaces_whole_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "a" / "b" / "x.json"
    atomic_write_bytes(path, b"old")
    atomic_write_bytes(path, b"new content")
    assert path.read_bytes() == b"new content"
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


def test_disk_full_keeps_the_old_file_removes_the_temp_file_and_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "x.json"
    atomic_write_bytes(path, b"old")

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(AtomicWriteError, match=rf"cannot write {path}: No space left on device \(ENOSPC\)"):
        atomic_write_bytes(path, b"new")
    with pytest.raises(AtomicWriteError):  # folders it had to create are removed again
        atomic_write_bytes(tmp_path / "new" / "deeper" / "y.json", b"y")
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


# ---- exact resumption on a toy loop (fast) -------------------------------------------------------

def _toy_run(directory: Path | None, *, every: int | None = 2, stop_at: int | None = None, steps: int = 8):
    """A loop with every kind of state fit() has: AdamW, a schedule, a shuffling generator, dropout."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(12, 4, generator=torch.Generator().manual_seed(2)), torch.randn(12, 1)
    chk = Checkpointer(directory, every=every, tag="toy", log=lambda line: None) if directory else None
    state = FitState()
    if chk is not None:
        state = chk.resume(model, opt, sched, gen) or state
    while state.step < steps:
        if not state.order:
            state.order = torch.randperm(12, generator=gen).tolist()
        idx, state.order = state.order[:4], state.order[4:]
        loss = (model(x[idx]) - y[idx]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        state.step += 1
        state.history.append({"loss": loss.item()})
        if chk is not None and chk.due(state.step):
            chk.save(model, opt, sched, gen, state)
        if stop_at == state.step:
            raise Stop
    return [h["loss"] for h in state.history], [p.detach().clone() for p in model.parameters()]


def _fresh_resume(directory: Path, tag: str, lines: list[str]):
    """What a new toy model, optimizer and schedule resume from ``directory`` (None: nothing)."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return Checkpointer(directory, every=2, tag=tag, log=lines.append).resume(model, opt, sched, torch.Generator())


def test_a_resumed_loop_equals_an_uninterrupted_one_bit_for_bit(tmp_path):
    plain_losses, plain_weights = _toy_run(None)
    for stop_at in (3, 4):  # between two checkpoints, and right after one
        d = tmp_path / f"stop{stop_at}"
        with pytest.raises(Stop):
            _toy_run(d, stop_at=stop_at)
        assert json.loads((d / "latest.json").read_text())["step"] == 2 * (stop_at // 2)
        losses, weights = _toy_run(d)
        assert losses == plain_losses
        assert all(torch.equal(a, b) for a, b in zip(weights, plain_weights))
    # Only the latest step's files are kept.
    assert sorted(p.name for p in (tmp_path / "stop4").iterdir()) == [
        "latest.json", "step-000008.pt", "step-000008.safetensors"]


def test_a_truncated_checkpoint_is_named_and_the_run_starts_over(tmp_path):
    plain_losses, _ = _toy_run(None)
    with pytest.raises(Stop):
        _toy_run(tmp_path, stop_at=5)
    state = tmp_path / "step-000004.pt"
    state.write_bytes(state.read_bytes()[:100])
    lines = []
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 8)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    assert Checkpointer(tmp_path, every=2, tag="toy", log=lines.append).resume(
        model, opt, sched, torch.Generator()) is None
    assert len(lines) == 1 and "latest.json" in lines[0] and "step-000004.pt does not match its sha256" in lines[0]
    assert _toy_run(tmp_path)[0] == plain_losses  # started over, same result


def test_a_checkpoint_of_another_configuration_is_ignored(tmp_path):
    with pytest.raises(Stop):
        _toy_run(tmp_path, stop_at=2)
    lines = []
    assert _fresh_resume(tmp_path, "other", lines) is None
    assert "another configuration" in lines[0]


def test_a_checkpoint_that_fails_half_way_through_restoring_leaves_nothing_changed(tmp_path):
    with pytest.raises(Stop):
        _toy_run(tmp_path, stop_at=2)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(list(model.parameters())[:2])  # not the optimizer the checkpoint was saved from
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    rng_before = torch.get_rng_state()
    lines = []
    assert Checkpointer(tmp_path, every=2, tag="toy", log=lines.append).resume(
        model, opt, sched, torch.Generator()) is None
    assert "checkpoint not used (loaded state dict contains a parameter group" in lines[0]  # failed in load_state_dict
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))  # weights rolled back
    assert torch.equal(torch.get_rng_state(), rng_before) and opt.state_dict()["state"] == {}


def test_the_loop_state_is_saved_as_the_format_2_plain_dict(tmp_path):
    """FitState.to_dict() writes exactly the keys the dict-based loop wrote (format 2), so older
    checkpoints still resume; best weights stay out of the state file."""
    with pytest.raises(Stop):
        _toy_run(tmp_path, stop_at=2)
    loop = torch.load(tmp_path / "step-000002.pt", weights_only=True)["loop"]
    assert sorted(loop) == ["bad_evals", "best", "best_step", "history", "order", "step", "step_time"]
    assert FitState.from_dict(loop).step == 2 and len(FitState.from_dict(loop).history) == 2


def test_a_loop_state_missing_a_field_is_named_and_the_run_starts_over(tmp_path):
    import io

    with pytest.raises(Stop):
        _toy_run(tmp_path, stop_at=2)
    path = tmp_path / "step-000002.pt"
    state = torch.load(path, weights_only=True)
    del state["loop"]["history"]
    buf = io.BytesIO()
    torch.save(state, buf)
    path.write_bytes(buf.getvalue())
    pointer = json.loads((tmp_path / "latest.json").read_text())
    pointer["files"][path.name] = ck.sha256_bytes(buf.getvalue())
    (tmp_path / "latest.json").write_text(json.dumps(pointer))
    lines = []
    assert _fresh_resume(tmp_path, "toy", lines) is None
    assert "loop state has no 'history'" in lines[0] and "starting the run from step 0" in lines[0]


@pytest.mark.parametrize("every", [0, -3, 1.5, True])
def test_checkpoint_every_must_be_a_positive_step_count(tmp_path, every):
    with pytest.raises(CheckpointError, match=rf"config field train.checkpoint_every={every!r}: must be a positive"):
        Checkpointer(tmp_path, every=every, tag="t")


def test_rng_states_round_trip_through_weights_only_loading(tmp_path):
    import io
    import random

    import numpy as np

    gen = torch.Generator().manual_seed(3)
    state = ck.capture_rng(gen)
    buf = io.BytesIO()
    torch.save(state, buf)
    expected = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=gen))
    torch.rand(5), np.random.rand(5), random.random(), torch.rand(5, generator=gen)  # move every RNG on
    ck.restore_rng(torch.load(io.BytesIO(buf.getvalue()), weights_only=True), gen)
    again = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=gen))
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2] == again[2] and torch.equal(expected[3], again[3])


# ---- exact resumption of the real training loop ---------------------------------------------------

@pytest.mark.slow
def test_fit_resumed_after_an_interruption_gives_the_same_history_metrics_and_weights(tmp_path):
    from egmf_core.batching import PromptEncoder
    from egmf_core.config import RunConfig
    from egmf_core.data.dataset import SPECS
    from egmf_core.run import build_model
    from egmf_core.train import evaluate, fit
    from tests.conftest import make_split, tiny_model_config, tiny_train_config

    spec, split = SPECS["meld"], make_split(20, "meld", seed=11)
    cfg = RunConfig(model=tiny_model_config(dropout=0.1), seed=7,  # dropout: the global RNG matters
                    train=tiny_train_config(max_steps=7, eval_every=3, batch_size=6, patience=5))

    def run(directory=None, stop_at=None):
        model, tok, _ = build_model(cfg, 6, 5, device=torch.device("cpu"))
        encoder = PromptEncoder(tok, spec, cfg.model)
        enc = encoder.encode(split)
        chk = Checkpointer(directory, every=2, tag="fit", log=lambda line: None) if directory else None

        def progress(step, total, message):
            if step == stop_at:
                raise Stop

        fr = fit(model, enc, enc, encoder, cfg.train, seed=cfg.seed, progress=progress, checkpoint=chk)
        res = evaluate(model, enc, encoder, cfg.train, mode="score", train_labels=split.labels)
        return fr.history, fr.best_step, res.metrics, [p.clone() for p in model.parameters() if p.requires_grad]

    plain = run()
    with pytest.raises(Stop):
        run(tmp_path, stop_at=5)  # after the step-4 checkpoint, past the step-3 evaluation
    resumed = run(tmp_path)
    assert resumed[:3] == plain[:3]
    assert all(torch.equal(a, b) for a, b in zip(resumed[3], plain[3]))


# ---- safe loading ---------------------------------------------------------------------------------

def _python_files(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (REPO / f).rglob("*.py"))


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
            yield node, f"{node.func.value.id}.{node.func.attr}"


def test_every_torch_load_in_the_repo_uses_weights_only():
    found = []
    for path in _python_files("egmf_core", "benchmarks", "tests"):
        for node, name in _calls(path):
            if name == "torch.load":
                kw = {k.arg: k.value for k in node.keywords}
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                found.append((f"{path.relative_to(REPO)}:{node.lineno}", ok))
    assert found, "the scan found no torch.load at all"
    assert [where for where, ok in found if not ok] == []


def test_pickles_are_read_only_through_the_restricted_unpickler():
    allowed = {"egmf_core/data/safe_pickle.py"}
    offenders = [f"{p.relative_to(REPO)}:{node.lineno} {name}"
                 for p in _python_files("egmf_core", "benchmarks") if str(p.relative_to(REPO)) not in allowed
                 for node, name in _calls(p) if name in ("pickle.load", "pickle.loads", "pickle.Unpickler")]
    assert offenders == []


def test_trust_remote_code_is_never_switched_on_in_code():
    offenders = []
    for path in _python_files("egmf_core", "benchmarks"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code" and \
                    isinstance(node.value, ast.Constant) and node.value.value is True:
                offenders.append(f"{path.relative_to(REPO)}:{node.value.lineno}")
    assert offenders == []
