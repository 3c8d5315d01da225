"""TFN (the classical baseline): shapes, gradients, padding, ablation, fusion arithmetic, no backbone, overfit."""

from __future__ import annotations

import math
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from egmf_core.data import load_dataset
from egmf_core.data.dataset import SPECS
from egmf_core.data.synth import write_synthetic
from egmf_core.tfn import TFN, TFN_MODALITIES, TFNConfigError, TFNSettings, loss, predict

VOCAB, B = 97, 6
DATASETS = tuple(SPECS)
TINY = dict(text_embed_dim=16, text_hidden=16, text_out=8, audio_hidden=4, vision_hidden=4, post_fusion_dim=16)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Each dataset's smoke twin, written in its real format and read back through the loaders."""
    root = tmp_path_factory.mktemp("tfn_data")
    out = {}
    for name in DATASETS:
        write_synthetic(name, root, seed=0, size=8 if name != "meld" else 64)
        out[name] = load_dataset(name, root)
    return out


def token_ids(texts: list[str], max_len: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """A stand-in tokenizer: one id per word (per character for Chinese; crc32 mod VOCAB, 0 = padding), right-padded."""
    pieces = [t.split() if " " in t else list(t) for t in texts]
    rows = [[1 + zlib.crc32(w.encode()) % (VOCAB - 1) for w in p][:max_len] or [1] for p in pieces]
    L = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), L, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    return ids, ids != 0


def _batch(split, n: int = B) -> dict[str, torch.Tensor]:
    ids, mask = token_ids(split.text[:n])
    return {"text_ids": ids, "text_mask": mask,
            "audio": torch.from_numpy(split.audio[:n]), "audio_lengths": torch.from_numpy(split.audio_lengths[:n]),
            "vision": torch.from_numpy(split.vision[:n]), "vision_lengths": torch.from_numpy(split.vision_lengths[:n])}


def _out_dim(name: str) -> int:
    spec = SPECS[name]
    return len(spec.labels) if spec.task == "classification" else 1


def _tfn(ds, **kw) -> TFN:
    torch.manual_seed(0)
    if "modalities" in kw:
        kw["modalities"] = tuple(kw["modalities"])
    return TFN(VOCAB, ds.audio_dim, ds.vision_dim, _out_dim(ds.name), TFNSettings(**{**TINY, **kw}))


@pytest.mark.parametrize("name", DATASETS)
def test_forward_backward_on_every_dataset_reaches_every_parameter(datasets, name):
    ds = datasets[name]
    model = _tfn(ds)
    out = model(**_batch(ds.train))
    assert out.shape == (B, _out_dim(name)) and torch.isfinite(out).all()
    targets = torch.from_numpy(ds.train.labels[:B])
    value = loss(out, targets, ds.spec.task)
    assert value.ndim == 0 and torch.isfinite(value)
    # a non-cancelling objective: an L1 loss's bias gradient is a sum of signs, which can be exactly 0
    (value + out.square().mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    pred = predict(out, ds.spec.task)
    assert pred.shape == (B,)
    if ds.spec.task == "classification":
        assert pred.dtype == torch.long and int(pred.max()) < len(ds.spec.labels)


@pytest.mark.parametrize("garbage", [1e6, float("nan")])
def test_padding_and_padding_side_never_change_the_output(datasets, garbage):
    ds = datasets["mosei"]
    model = _tfn(ds).eval()
    clean = _batch(ds.train)
    dirty = {k: v.clone() for k, v in clean.items()}
    dirty["audio"] = torch.cat([dirty["audio"], torch.full((B, 4, ds.audio_dim), garbage)], dim=1)
    dirty["vision"] = torch.cat([dirty["vision"], torch.full((B, 2, ds.vision_dim), garbage)], dim=1)
    for i, n in enumerate(clean["audio_lengths"].tolist()):
        dirty["audio"][i, n:] = garbage
    for i, n in enumerate(clean["vision_lengths"].tolist()):
        dirty["vision"][i, n:] = garbage
    # text left-padded with a different (but in-vocabulary) pad id, plus two more pad positions
    ids, mask = clean["text_ids"], clean["text_mask"]
    left_ids, left_mask = torch.full((B, ids.shape[1] + 2), 7), torch.zeros(B, ids.shape[1] + 2, dtype=torch.bool)
    for i in range(B):
        n = int(mask[i].sum())
        left_ids[i, -n:], left_mask[i, -n:] = ids[i, :n], True
    dirty["text_ids"], dirty["text_mask"] = left_ids, left_mask
    out = model(**dirty)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, model(**clean))


@pytest.mark.parametrize("removed, module", [("text", "text_net"), ("audio", "audio_net"), ("visual", "vision_net")])
def test_a_removed_modality_removes_its_subnetwork_and_its_factor(datasets, removed, module):
    ds = datasets["meld"]
    full = _tfn(ds)
    ablated = _tfn(ds, modalities=[m for m in TFN_MODALITIES if m != removed]).eval()
    assert any(n.startswith(module + ".") for n, _ in full.named_parameters())
    assert not any(n.startswith(module + ".") for n, _ in ablated.named_parameters())
    widths = {"text": TINY["text_out"], "audio": TINY["audio_hidden"], "visual": TINY["vision_hidden"]}
    assert full.fusion_dim == 9 * 5 * 5
    assert ablated.fusion_dim == full.fusion_dim // (widths[removed] + 1)
    batch = _batch(ds.train)
    other = dict(batch)
    if removed == "text":
        other["text_ids"] = (batch["text_ids"] * 3 + 1) % VOCAB
    else:
        key = "audio" if removed == "audio" else "vision"
        other[key] = torch.randn_like(batch[key]) * 10
    torch.testing.assert_close(ablated(**other), ablated(**batch))


def test_the_fusion_layer_is_the_outer_product_of_the_subnetworks_with_appended_ones(datasets):
    ds = datasets["mosei"]
    model = _tfn(ds).eval()
    batch = _batch(ds.train)
    seen = {}
    model.post_fusion.register_forward_hook(lambda mod, args, out: seen.setdefault("z_m", args[0]))
    model(**batch)
    z_l = model.text_net(batch["text_ids"], batch["text_mask"])
    z_a = model.audio_net(batch["audio"], batch["audio_lengths"])
    z_v = model.vision_net(batch["vision"], batch["vision_lengths"])
    one = torch.ones(B, 1)
    expected = torch.einsum("bi,bj,bk->bijk", torch.cat([z_l, one], 1), torch.cat([z_a, one], 1),
                            torch.cat([z_v, one], 1)).reshape(B, -1)
    torch.testing.assert_close(seen["z_m"], expected)
    # the appended 1s keep the unimodal terms: the slice [., 1, 1] is z_l itself
    z_m = seen["z_m"].view(B, TINY["text_out"] + 1, TINY["audio_hidden"] + 1, TINY["vision_hidden"] + 1)
    torch.testing.assert_close(z_m[:, :-1, -1, -1], z_l)


def test_paper_sizes_give_the_documented_fusion_width():
    with torch.device("meta"):
        model = TFN(1000, 74, 35, 1)
    assert model.fusion_dim == 129 * 33 * 33 == 140_481
    assert model.post_fusion[1].weight.numel() == 140_481 * 128  # 18.0M weights in the first inference layer


def test_loss_and_predict_follow_the_field_definitions():
    logits = torch.zeros(2, 7)
    assert math.isclose(float(loss(logits, torch.tensor([3, 5]), "classification")), math.log(7), rel_tol=1e-6)
    scores = torch.tensor([[0.5], [-1.0]])
    assert math.isclose(float(loss(scores, torch.tensor([1.0, 1.0]), "regression")), (0.5 + 2.0) / 2)
    assert predict(torch.tensor([[0.1, 2.0, -1.0]]), "classification").tolist() == [1]
    assert predict(scores, "regression").tolist() == [0.5, -1.0]
    with pytest.raises(TFNConfigError, match="task='ranking'"):
        loss(scores, torch.zeros(2), "ranking")


def test_output_range_squashes_scores_into_the_label_range(datasets):
    ds = datasets["sims_v2"]
    model = _tfn(ds, output_range=(-1.0, 1.0)).eval()
    with torch.no_grad():
        model.post_fusion[-1].bias.fill_(50.0)  # a huge raw score
    out = model(**_batch(ds.train))
    assert (out <= 1.0).all() and (out > 0.99).all()


def test_a_training_batch_of_one_sample_works(datasets):
    ds = datasets["cherma"]
    model = _tfn(ds).train()
    out = model(**_batch(ds.train, n=1))
    loss(out, torch.from_numpy(ds.train.labels[:1]), "classification").backward()


def test_no_backbone_is_loaded(datasets, monkeypatch):
    import transformers

    import egmf_core.backbones as backbones

    def forbidden(*args, **kwargs):
        raise AssertionError("TFN tried to load a backbone or pretrained weights")

    monkeypatch.setattr(backbones, "build_backbone", forbidden)
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoModel, transformers.AutoTokenizer):
        monkeypatch.setattr(cls, "from_pretrained", forbidden)
    ds = datasets["meld"]
    model = _tfn(ds)
    model(**_batch(ds.train)).sum().backward()
    assert not any(isinstance(m, transformers.PreTrainedModel) for m in model.modules())


def test_importing_tfn_imports_no_transformers():
    code = "import sys, egmf_core.tfn; print('transformers' in sys.modules)"
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo, check=True)
    assert out.stdout.strip() == "False"


def test_overfits_64_synthetic_meld_samples(datasets):
    """64 training samples of the MELD twin, full batch: train accuracy >= 95% within 300 Adam steps."""
    ds = datasets["meld"]
    assert len(ds.train) == 64
    model = _tfn(ds, dropouts=(0.0, 0.0, 0.0, 0.0), text_out=16, audio_hidden=8, vision_hidden=8,
                 post_fusion_dim=64)
    batch = _batch(ds.train, n=64)
    targets = torch.from_numpy(ds.train.labels)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        opt.zero_grad()
        value = loss(model(**batch), targets, "classification")
        value.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = (predict(model(**batch), "classification") == targets).float().mean().item()
    assert accuracy >= 0.95, f"train accuracy {accuracy:.2f} after 300 steps (loss {value.item():.3f})"
