"""MSE-Adapter: shapes on every dataset, gradients, padding invariance, ablation, equations, size."""

from __future__ import annotations

import pytest
import torch

from egmf_core.data import load_dataset
from egmf_core.data.dataset import SPECS
from egmf_core.data.synth import write_synthetic
from egmf_core.mse_adapter import (
    LSTM_HIDDEN_BY_DATASET,
    MSE_MODALITIES,
    MSEAdapter,
    MSEAdapterConfigError,
    MSEAdapterSettings,
)

D_LLM, N_TOKENS, B = 32, 2, 4
DATASETS = tuple(SPECS)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Each dataset's smoke twin, written in its real format and read back through the loaders."""
    root = tmp_path_factory.mktemp("mse_data")
    out = {}
    for name in DATASETS:
        write_synthetic(name, root, seed=0, size=8)
        out[name] = load_dataset(name, root)
    return out


def _batch(ds, seed: int = 0, L_t: int = 6) -> dict[str, torch.Tensor]:
    """The first B training samples as tensors, with random 'LLM embeddings' for the text."""
    g = torch.Generator().manual_seed(seed)
    s = ds.train
    n_tok = torch.tensor([6, 3, 1, 5])[:B]
    mask = torch.arange(L_t).unsqueeze(0) < n_tok.unsqueeze(1)  # (B, L_t) right-padded
    e_text = torch.randn(B, L_t, D_LLM, generator=g) * mask.unsqueeze(-1)
    return {"e_text": e_text, "text_mask": mask,
            "audio": torch.from_numpy(s.audio[:B]), "audio_lengths": torch.from_numpy(s.audio_lengths[:B]),
            "vision": torch.from_numpy(s.vision[:B]), "vision_lengths": torch.from_numpy(s.vision_lengths[:B])}


def _adapter(ds, **kw) -> MSEAdapter:
    torch.manual_seed(0)
    ha, hv = LSTM_HIDDEN_BY_DATASET[ds.name]
    if "modalities" in kw:
        kw["modalities"] = tuple(kw["modalities"])
    return MSEAdapter(D_LLM, ds.audio_dim, ds.vision_dim, N_TOKENS,
                      MSEAdapterSettings(audio_lstm_hidden=ha, vision_lstm_hidden=hv, d_mix=16, **kw))


@pytest.mark.parametrize("name", DATASETS)
def test_forward_backward_shapes_and_every_parameter_gets_a_gradient(datasets, name):
    ds = datasets[name]
    model = _adapter(ds)
    t_pseudo = model(**_batch(ds))
    assert t_pseudo.shape == (B, N_TOKENS, D_LLM) and t_pseudo.dtype == torch.float32
    assert torch.isfinite(t_pseudo).all()
    t_pseudo.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize("garbage", [1e6, float("nan")])
def test_padding_never_changes_t_pseudo(datasets, garbage):
    ds = datasets["mosei"]
    model = _adapter(ds).eval()
    clean = _batch(ds)
    dirty = {k: v.clone() for k, v in clean.items()}
    # longer arrays, with garbage in every padded frame and padded text position
    pad_a = torch.full((B, 5, ds.audio_dim), garbage)
    pad_v = torch.full((B, 3, ds.vision_dim), garbage)
    dirty["audio"] = torch.cat([dirty["audio"], pad_a], dim=1)
    dirty["vision"] = torch.cat([dirty["vision"], pad_v], dim=1)
    for i, n in enumerate(clean["audio_lengths"].tolist()):
        dirty["audio"][i, n:] = garbage
    for i, n in enumerate(clean["vision_lengths"].tolist()):
        dirty["vision"][i, n:] = garbage
    dirty["e_text"] = torch.where(clean["text_mask"].unsqueeze(-1), clean["e_text"], torch.tensor(garbage))
    dirty["e_text"] = torch.cat([dirty["e_text"], torch.full((B, 2, D_LLM), garbage)], dim=1)
    dirty["text_mask"] = torch.cat([clean["text_mask"], torch.zeros(B, 2, dtype=torch.bool)], dim=1)
    out_dirty = model(**dirty)
    assert torch.isfinite(out_dirty).all()
    torch.testing.assert_close(out_dirty, model(**clean))


def test_a_sample_alone_equals_the_sample_in_a_padded_batch(datasets):
    ds = datasets["sims_v2"]
    model = _adapter(ds).eval()
    batch = _batch(ds)
    i = 2  # one text token: the most padding of the batch
    la, lv, lt = int(batch["audio_lengths"][i]), int(batch["vision_lengths"][i]), 1
    alone = model(batch["e_text"][i:i + 1, :lt], batch["text_mask"][i:i + 1, :lt],
                  batch["audio"][i:i + 1, :la], batch["audio_lengths"][i:i + 1],
                  batch["vision"][i:i + 1, :lv], batch["vision_lengths"][i:i + 1])
    torch.testing.assert_close(model(**batch)[i:i + 1], alone)


@pytest.mark.parametrize("removed, module", [("audio", "audio_enc"), ("visual", "vision_enc"), ("text", "tgm")])
def test_a_removed_modality_removes_its_parameters_and_its_input(datasets, removed, module):
    ds = datasets["meld"]
    full = _adapter(ds)
    kept = [m for m in MSE_MODALITIES if m != removed]
    ablated = _adapter(ds, modalities=kept).eval()
    removed_params = sum(p.numel() for n, p in full.named_parameters() if n.startswith(module + "."))
    assert removed_params > 0
    assert not any(n.startswith(module + ".") for n, _ in ablated.named_parameters())
    n_full = sum(p.numel() for p in full.parameters())
    assert sum(p.numel() for p in ablated.parameters()) == n_full - removed_params
    # the removed input no longer reaches T_pseudo
    batch = _batch(ds)
    other = dict(batch)
    key = {"audio": "audio", "visual": "vision", "text": "e_text"}[removed]
    other[key] = torch.randn_like(batch[key]) * 10
    torch.testing.assert_close(ablated(**other), ablated(**batch))
    ablated(**batch).sum().backward()
    assert all(p.grad is not None for p in ablated.parameters())


def test_text_alone_builds_no_lstm():
    model = MSEAdapter(D_LLM, 6, 5, N_TOKENS, MSEAdapterSettings(modalities=("text",), d_mix=16))
    assert model.audio_enc is None and model.vision_enc is None
    out = model(torch.randn(2, 3, D_LLM), torch.ones(2, 3, dtype=torch.bool), torch.zeros(2, 1, 6),
                torch.ones(2, dtype=torch.long), torch.zeros(2, 1, 5), torch.ones(2, dtype=torch.long))
    assert out.shape == (2, N_TOKENS, D_LLM)


def test_tgm_is_the_hadamard_product_with_the_masked_text_mean(datasets):
    ds = datasets["mosei"]
    model = _adapter(ds).eval()
    batch = _batch(ds)
    A = model.audio_enc(batch["audio"], batch["audio_lengths"])
    V = model.vision_enc(batch["vision"], batch["vision_lengths"])
    m = batch["text_mask"].unsqueeze(-1).float()
    t = model.tgm.text_proj((batch["e_text"] * m).sum(1) / m.sum(1))
    torch.testing.assert_close(model.tgm(batch["e_text"], batch["text_mask"], [A, V]), A * t + V * t)


def test_msf_mixes_three_scales_with_one_shared_kernel_and_tokens_are_affine_copies():
    torch.manual_seed(0)
    model = MSEAdapter(4096 // 64, 6, 5, 3, MSEAdapterSettings(d_mix=8)).eval()  # d_llm 64 -> branch widths 8, 2, 4
    assert [b[0].out_features for b in model.msf.branches] == [8, 2, 4]
    M = torch.randn(2, 8)
    c = model.msf.integrate.weight.flatten()  # (3,) c_1..c_3
    expected = sum(c[i] * model.msf.branches[i](M) for i in range(3)) + model.msf.integrate.bias
    torch.testing.assert_close(model.msf(M), expected)
    z = model.projector(model.msf(M))  # (2, d_llm)
    a, b = model.token_projector.weight.flatten(), model.token_projector.bias
    tokens = model.token_projector(z.unsqueeze(-1)).transpose(1, 2)
    for j in range(3):
        torch.testing.assert_close(tokens[:, j], a[j] * z + b[j])


# (audio dim, visual dim) of MSE-Adapter's processed features (its configs; shared/paper/datasets.md)
REAL_FEATURE_DIMS = {"mosei": (74, 35), "sims_v2": (25, 177), "meld": (64, 64), "cherma": (1024, 2048)}
# Hand-computed in the module docstring (d_llm 4096, 4 pseudo tokens, the per-dataset LSTM widths).
EXPECTED_PARAMS = {"mosei": 2_631_692, "sims_v2": 2_680_716, "meld": 2_632_844, "cherma": 2_842_380}


def test_trainable_parameters_at_chatglm3_size_match_the_papers_2_6m_to_2_8m():
    counts = {}
    for name, (d_a, d_v) in REAL_FEATURE_DIMS.items():
        ha, hv = LSTM_HIDDEN_BY_DATASET[name]
        with torch.device("meta"):  # no memory: only shapes
            model = MSEAdapter(4096, d_a, d_v, 4, MSEAdapterSettings(audio_lstm_hidden=ha, vision_lstm_hidden=hv))
        counts[name] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counts == EXPECTED_PARAMS
    # the paper: "approximately 2.6M to 2.8M trainable parameters upon the 6/7B models"
    assert abs(min(counts.values()) - 2.6e6) <= 0.1 * 2.6e6
    assert abs(max(counts.values()) - 2.8e6) <= 0.1 * 2.8e6
    assert all(0.9 * 2.6e6 <= c <= 1.1 * 2.8e6 for c in counts.values())


def test_bad_arguments_name_the_field():
    with pytest.raises(MSEAdapterConfigError, match="modalities"):
        MSEAdapter(D_LLM, 6, 5, 2, MSEAdapterSettings(modalities=("text", "smell")))
    with pytest.raises(MSEAdapterConfigError, match="msf_activation"):
        MSEAdapter(D_LLM, 6, 5, 2, MSEAdapterSettings(msf_activation="mish"))
