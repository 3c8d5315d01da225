"""What a run records for the reports: validation history, test-set sampling CI, eval modes,
a portable data source; and the method's open readings as switches (fusion direction)."""

import numpy as np
import pytest
import torch

from egmf_core.config import ConfigError, DataConfig, RunConfig, apply_overrides
from egmf_core.fusion import TextCentricFusion
from egmf_core.metrics import compute_metrics
from egmf_core.uncertainty import _VECTORISED, sampling_ci
from tests.conftest import tiny_model_config, tiny_train_config


def test_one_run_records_history_sampling_ci_modes_and_a_portable_source(tmp_path):
    from egmf_core.data.synth import write_synthetic
    from egmf_core.run import run_experiment

    write_synthetic("meld", tmp_path, size=40)
    cfg = RunConfig(model=tiny_model_config(), train=tiny_train_config(max_steps=4, eval_every=2),
                    data=DataConfig(name="meld", root=str(tmp_path)))
    out = run_experiment(cfg)
    assert out.status == "ok"
    assert [h["step"] for h in out.valid_history] == [2, 4]
    assert {"loss", "wf1", "invalid_rate"} <= set(out.valid_history[0])
    low, high = out.sampling_ci["test"]["wf1"]
    assert low <= out.metrics["test"]["wf1"] <= high and high - low > 0
    assert out.eval_modes == {"valid": "generate", "test": "generate"}  # one mode for both by default
    assert str(tmp_path) not in out.data_source
    assert out.data_source.startswith("meld-csv: meld sha256:")


def test_vectorised_key_metrics_equal_compute_metrics():
    rng = np.random.default_rng(0)
    t, p = rng.integers(0, 7, (4, 30)), rng.integers(0, 7, (4, 30))
    for metric in ("wf1", "acc"):
        want = [compute_metrics("meld", t[i], p[i])[metric] for i in range(4)]
        assert _VECTORISED[metric](t, p) == pytest.approx(want)
    y, q = rng.normal(size=(4, 30)), rng.normal(size=(4, 30))
    assert _VECTORISED["mae"](y, q) == pytest.approx([compute_metrics("mosei", y[i], q[i])["mae"] for i in range(4)])
    assert sampling_ci("meld", t[0], p[0], "wf1") == sampling_ci("meld", t[0], p[0], "wf1")  # fixed RNG


def test_valid_eval_mode_and_fusion_direction_are_validated():
    cfg = RunConfig(data=DataConfig(name="meld"))
    assert apply_overrides(cfg, {"train.valid_eval_mode": "score"}).train.valid_eval_mode == "score"
    with pytest.raises(ConfigError, match="train.valid_eval_mode"):
        apply_overrides(RunConfig(data=DataConfig(name="mosei")), {"train.valid_eval_mode": "score"})
    with pytest.raises(ConfigError, match="model.fusion_direction"):
        apply_overrides(cfg, {"model.fusion_direction": "audio_queries"})


def test_bidirectional_fusion_lets_audio_visual_read_the_text():
    g = torch.Generator().manual_seed(0)
    H_text, H_av = torch.randn(2, 5, 16, generator=g), torch.randn(2, 2, 16, generator=g)
    mask = torch.tensor([[1] * 5, [1] * 3 + [0] * 2], dtype=torch.bool)
    torch.manual_seed(0)
    plain = TextCentricFusion(16, 4, 0.0).eval()
    torch.manual_seed(0)
    both = TextCentricFusion(16, 4, 0.0, direction="bidirectional").eval()
    assert not any("av_cross_attn" in n for n, _ in plain.named_parameters())  # the default is unchanged
    assert any("av_cross_attn" in n for n, _ in both.named_parameters())
    assert both(H_text, mask, H_av).shape == (2, 16)
    assert not torch.allclose(both(H_text, mask, H_av), plain(H_text, mask, H_av))
    dirty = H_text.clone()
    dirty[~mask] = 1e3  # padded text is never read, in either direction
    torch.testing.assert_close(both(dirty, mask, H_av), both(H_text, mask, H_av))
