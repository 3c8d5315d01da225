"""Run groups: grouped LoRA against peft, gradient isolation, a grouped step against separate steps,
runs leaving and joining, and a killed group resuming every run from its own checkpoint."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from egmf_core import group as G
from egmf_core.backbones import apply_lora, build_backbone
from egmf_core.batching import LENGTH_BUCKETS, collate, padded_length
from egmf_core.config import DataConfig, RunConfig
from egmf_core.lora import LoRAAdapters, SlotLayout, SlotRNG, install_grouped_lora
from egmf_core.run import build_model, load_run_data, run_experiment
from egmf_core.train import FitLoop
from tests.conftest import tiny_model_config, tiny_train_config

# Three runs that differ in what a group allows: seed, LoRA on/off, n_tokens, modalities, experts,
# batch size (a smaller batch gets dummy rows), with EGMF and LoRA dropout on (each run's RNG).
VARIANTS = [
    dict(seed=7, model=dict(dropout=0.1, lora_dropout=0.1)),
    dict(seed=8, model=dict(lora=False, modalities=["text", "audio"], experts=["E1", "E3"], n_tokens=3, dropout=0.1)),
    dict(seed=9, model=dict(n_tokens=1, lora_r=4, lora_dropout=0.2), train=dict(batch_size=5)),
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from egmf_core.data.synth import write_synthetic

    root = tmp_path_factory.mktemp("group-data")
    write_synthetic("meld", root, seed=0, size=40)
    return root


def _cfg(root, seed: int, model=None, train=None) -> RunConfig:
    return RunConfig(seed=seed, model=tiny_model_config(**(model or {})),
                     train=tiny_train_config(**({"max_steps": 6, "eval_every": 3} | (train or {}))),
                     data=DataConfig(name="meld", root=str(root)))


def _variants(root, **train):
    return [_cfg(root, v["seed"], v.get("model"), {**v.get("train", {}), **train}) for v in VARIANTS]


def _group(configs) -> G.RunGroup:
    shared = G.build_shared(configs[0])
    grp = G.RunGroup(shared, len(configs), "longest", None, None)
    grp.runs = [G.build_run(shared, G.GroupItem(c, i, None, i)) for i, c in enumerate(configs)]
    return grp


def _lora_key(path: str, which: str, prefix: str = "llm.") -> str:
    """peft's name for a LoRA weight (prefix "llm." inside EGMF, "" on the bare peft model)."""
    return f"{prefix}base_model.model.{path}.lora_{which}.default.weight"


def test_padded_length_uses_a_fixed_ladder_of_buckets():
    assert padded_length(37, "longest") == 37
    assert padded_length(37, "bucket") == 40 and padded_length(40, "bucket") == 40
    assert all(b % 8 == 0 for b in LENGTH_BUCKETS) and LENGTH_BUCKETS[0] == 16
    assert all(b2 / b1 <= 1.5 for b1, b2 in zip(LENGTH_BUCKETS, LENGTH_BUCKETS[1:]))


@pytest.mark.parametrize("backbone", ["llama3-tiny", "glm4-tiny"])
def test_grouped_lora_is_peft_lora_for_one_adapter(backbone):
    cfg = tiny_model_config(backbone=backbone, lora_dropout=0.2)
    llm, _, info = build_backbone(cfg, device="cpu")
    ref = apply_lora(copy.deepcopy(llm), cfg, seed=5)
    router = install_grouped_lora(llm, info.lora_targets)
    adapters = LoRAAdapters(llm, cfg, info.lora_targets, seed=5)
    peft_params = dict(ref.named_parameters())
    with torch.no_grad():  # the same non-zero B in both, so the adapters change the output
        for path in adapters.paths:
            assert torch.equal(adapters.pair(path)[0], peft_params[_lora_key(path, "A", "")])  # init: bit for bit
            b = torch.randn_like(peft_params[_lora_key(path, "B", "")]) * 0.1
            peft_params[_lora_key(path, "B", "")].copy_(b)
            adapters.pair(path)[1].copy_(b)
    ids, mask = torch.randint(0, 100, (3, 9)), torch.ones(3, 9, dtype=torch.long)
    ref.train(), llm.train()
    torch.manual_seed(3)  # the same dropout draws: the run's stream is the global one peft draws from
    want = ref(input_ids=ids, attention_mask=mask).logits
    want.square().mean().backward()
    torch.manual_seed(3)
    rng = SlotRNG(cuda=False)  # the run's stream starts where peft's global one did
    with router.activate([adapters], SlotLayout(3, [(3, 9)]), [rng]):
        got = llm(input_ids=ids, attention_mask=mask).logits
    got.square().mean().backward()
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    for path in adapters.paths:
        for k, which in enumerate("AB"):
            g_ref = peft_params[_lora_key(path, which, "")].grad
            assert (adapters.pair(path)[k].grad - g_ref).abs().max() <= 1e-5 * g_ref.abs().max() + 1e-9


def test_one_runs_loss_gives_the_other_runs_exactly_zero_gradient(data_root):
    grp = _group(_variants(data_root))
    batches = [collate(r.loop.train, r.loop.next_indices(), with_answer=True) for r in grp.runs]
    losses = G.grouped_loss(grp, batches)
    assert len(losses) == 3 and all(torch.isfinite(x) for x in losses)
    assert grp.runs[1].model.lora is None  # a LoRA-off run has no adapters
    for i in range(3):
        for r in grp.runs:
            r.model.zero_grad(set_to_none=True)
        losses[i].backward(retain_graph=True)
        for j, r in enumerate(grp.runs):
            grads = [p.grad for p in r.model.parameters() if p.requires_grad]
            if j == i:
                assert any(g is not None and g.abs().sum() > 0 for g in grads)
            else:
                assert all(g is None or torch.count_nonzero(g) == 0 for g in grads), (i, j)


def _solo_step(cfg: RunConfig) -> dict[str, torch.Tensor]:
    """The run alone: build_model (peft LoRA) and one step of the one training loop."""
    from egmf_core.batching import PromptEncoder

    data, _, train_split = load_run_data(cfg)
    model, tok, _ = build_model(cfg, data.audio_dim, data.vision_dim, device=torch.device("cpu"))
    encoder = PromptEncoder(tok, data.spec, cfg.model)
    loop = FitLoop(model, encoder.encode(train_split), encoder.encode(data.valid), encoder, cfg.train,
                   seed=cfg.seed, checkpoint=None)
    loop._train_step()
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_one_grouped_step_equals_each_run_stepped_alone(data_root):
    configs = _variants(data_root)
    solo = [_solo_step(c) for c in configs]
    grp = _group(configs)
    grp.train_step()
    for r, want in zip(grp.runs, solo):
        got = {n: p for n, p in r.model.named_parameters() if p.requires_grad and not n.startswith("lora.")}
        if r.model.lora is not None:
            for path in r.model.lora.paths:
                a, b = r.model.lora.pair(path)
                got[_lora_key(path, "A")], got[_lora_key(path, "B")] = a, b
        assert set(got) == set(want)
        worst = max(float((got[n] - want[n]).abs().max()) for n in want)
        assert worst <= 1e-5, (r.index, worst)


def _metrics(outcome):
    return {s: outcome.metrics[s] for s in ("valid", "test")}


def _assert_close(got, want, tol=1e-3):
    for split in want:
        for k, v in want[split].items():
            assert got[split][k] == pytest.approx(v, abs=tol), (split, k)


def test_a_run_that_stops_early_leaves_and_a_queued_run_joins(data_root):
    configs = _variants(data_root, max_steps=8, eval_every=2)
    # Run 1 cannot improve (lr ~ 0): with patience 1 it stops at its second validation pass.
    configs[1].train.lr = configs[1].train.fusion_lr = 1e-12
    configs[1].train.patience = 1
    done = []
    outcomes = G.run_group(configs, group_size=2, on_done=lambda i, o: done.append((i, o.steps)))
    assert done[0] == (1, 4)  # run 1 left first, at step 4 of 8; run 2 then took its place
    assert sorted(i for i, _ in done) == [0, 1, 2]
    assert [o.steps for o in outcomes] == [8, 4, 8]
    assert [o.cost["group_size"] for o in outcomes] == [2, 2, 2]
    for cfg, got in zip(configs, outcomes):
        want = run_experiment(cfg)
        assert got.status == want.status == "ok"
        assert got.best_step == want.best_step
        _assert_close(_metrics(got), _metrics(want))


class Killed(Exception):
    pass


def test_a_killed_group_resumes_each_run_from_its_own_checkpoint(data_root, tmp_path):
    configs = _variants(data_root, max_steps=10, eval_every=5)
    configs[0].train.checkpoint_every, configs[1].train.checkpoint_every, configs[2].train.checkpoint_every = 3, 4, 2
    dirs = [tmp_path / f"run{i}" for i in range(3)]
    whole = G.run_group(configs, group_size=3)

    def kill_at_7(index, step, total, text):
        if step == 7:
            raise Killed()

    with pytest.raises(Killed):
        G.run_group([G.GroupItem(c, i, d) for i, (c, d) in enumerate(zip(configs, dirs))], group_size=3,
                    progress=kill_at_7)
    steps = [int(json.loads((d / "latest.json").read_text())["step"]) for d in dirs]
    assert steps == [6, 5, 6]  # each run's own cadence (and its validation pass at step 5)
    resumed = G.run_group([G.GroupItem(c, i, d) for i, (c, d) in enumerate(zip(configs, dirs))], group_size=3)
    for got, want in zip(resumed, whole):
        assert got.steps == want.steps == 10
        assert [h["step"] for h in got.valid_history] == [h["step"] for h in want.valid_history]
        _assert_close(_metrics(got), _metrics(want), tol=1e-5)
