"""The grid: expansion and filters, run ids (config hashes), sharding, profiles and their roots."""

from __future__ import annotations

import pytest

from benchmarks.execution import profiles
from benchmarks.execution.grid import GridArgs, GridError, expand, parse_seeds, parse_shard, shard, unique_runs
from benchmarks.execution.profiles import ProfileError, build_run_config, resolve_run_config
from benchmarks.execution.tables import load_table
from egmf_core.config import ConfigError, RunConfig, config_hash
from tests.conftest import isolate_harness


@pytest.fixture
def smoke_repo(tmp_path, monkeypatch):
    """Point "<repo>" at a temporary dir and make synthetic data with a fake writer."""
    return isolate_harness(tmp_path, monkeypatch)


@pytest.fixture
def paper_roots(tmp_path, monkeypatch):
    data, models = tmp_path / "data", tmp_path / "models"
    for name in ("mosei", "sims_v2", "meld", "cherma"):
        (data / name).mkdir(parents=True)
    for d in profiles.MODEL_DIRS.values():
        (models / d).mkdir(parents=True)
    monkeypatch.delenv(profiles.DATA_ROOT_ENV, raising=False)
    monkeypatch.delenv(profiles.MODEL_ROOT_ENV, raising=False)
    return data, models


# ---- expansion ----------------------------------------------------------------------------------

def test_modality_grid_is_rows_times_datasets_times_seeds():
    spec = load_table("modality_ablation")
    cells = expand(spec, "smoke")
    assert len(cells) == 7 * 4 * 5
    assert len(unique_runs(cells)) == 140  # every cell is a different configuration
    assert [c.row for c in cells[:20]] == ["T+A+V"] * 20  # row, then dataset, then seed order
    assert [c.seed for c in cells[:5]] == [1111, 1112, 1113, 1114, 1115]


def test_filters_keep_only_the_named_rows_datasets_and_seeds():
    spec = load_table("modality_ablation")
    cells = expand(spec, "smoke", GridArgs(rows=["-A", "-T"], datasets=["meld"], seeds=[7]))
    assert [(c.row, c.dataset, c.seed) for c in cells] == [("-T", "meld", 7), ("-A", "meld", 7)]
    assert cells[0].config.model.modalities == ["audio", "visual"]


def test_paper_profile_has_five_seeds():
    cells = expand(load_table("main_erc"), "paper", check_roots=False)
    assert sorted({c.seed for c in cells}) == [1111, 1112, 1113, 1114, 1115]
    assert [r.name for r in load_table("main_erc").rows] == ["EGMF", "MSE-Adapter", "TFN"]
    assert len(cells) == 3 * 2 * 5  # 3 rows (EGMF and the two baselines) x meld, cherma x 5 seeds


def test_unknown_filter_names_the_flag_and_the_known_values():
    spec = load_table("modality_ablation")
    with pytest.raises(GridError, match=r"'-X' in --rows .*T\+A\+V, -T, -A"):
        expand(spec, "smoke", GridArgs(rows=["-T", "-X"]))
    with pytest.raises(GridError, match=r"'imdb' in --datasets .*mosei, sims_v2, meld, cherma"):
        expand(spec, "smoke", GridArgs(datasets=["imdb"]))
    with pytest.raises(ProfileError, match="unknown profile 'big'.*smoke, scale, paper"):
        expand(spec, "big")
    with pytest.raises(GridError, match="bad seed -1"):
        expand(spec, "smoke", GridArgs(seeds=[-1]))


def test_a_row_restricted_to_some_datasets_skips_the_others(tmp_path):
    abl = tmp_path / "ablations"
    abl.mkdir()
    (abl / "table_numbers.toml").write_text('[tables]\n"1" = "tiny"\n')
    (abl / "tiny.toml").write_text(
        'name = "tiny"\ncaption = "t"\ndatasets = ["meld", "cherma"]\n'
        'metrics = { meld = ["wf1"], cherma = ["wf1"] }\n[seeds]\nsmoke = [1]\npaper = [1]\n'
        '[[rows]]\nname = "a"\n[[rows]]\nname = "b"\ndatasets = ["cherma"]\noverrides = { "model.n_tokens" = 2 }\n'
    )
    cells = expand(load_table("tiny", abl), "smoke")
    assert [(c.row, c.dataset) for c in cells] == [("a", "meld"), ("a", "cherma"), ("b", "cherma")]


def test_statistics_table_ignores_run_seeds_and_never_shares_a_training_run_id():
    stats = expand(load_table("datasets"), "smoke", GridArgs(seeds=[1111, 1112]))
    assert [(c.dataset, c.seed, c.trains) for c in stats] == [
        ("mosei", 0, False), ("sims_v2", 0, False), ("meld", 0, False), ("cherma", 0, False)]
    assert stats[0].identity()["kind"] == "dataset_stats"
    trained = {c.run_id for c in expand(load_table("main_msa"), "smoke", GridArgs(seeds=[0]))}
    assert not trained & {c.run_id for c in stats}


# ---- run ids ------------------------------------------------------------------------------------

def test_run_id_is_the_config_hash_and_survives_a_round_trip():
    spec = load_table("modality_ablation")
    cell = expand(spec, "smoke", GridArgs(rows=["-V"], datasets=["mosei"], seeds=[1111]))[0]
    assert cell.run_id == config_hash(cell.config)
    assert cell.run_id == config_hash(RunConfig.from_dict(cell.config.to_dict()))
    again = expand(load_table("modality_ablation"), "smoke", GridArgs(rows=["-V"], datasets=["mosei"], seeds=[1111]))[0]
    assert again.run_id == cell.run_id and len(cell.run_id) == 12


def test_table_and_row_names_are_not_in_the_hash_so_the_full_model_is_shared():
    full = {
        "main_erc": "EGMF", "modality_ablation": "T+A+V", "expert_ablation": "all experts",
        "backbone_swap": "GLM3-6B", "lora": "GLM3-6B LoRA on",
        "expert_design": "paper (1:8 Mish, 1:4 GELU, 1:2 Swish)", "pseudo_tokens": "4 tokens",
    }
    ids = {
        table: expand(load_table(table), "smoke", GridArgs(rows=[row], datasets=["meld"], seeds=[1111]))[0].run_id
        for table, row in full.items()
    }
    assert len(set(ids.values())) == 1, ids


def test_any_override_changes_the_run_id():
    spec = load_table("expert_ablation")
    cells = expand(spec, "smoke", GridArgs(datasets=["meld"], seeds=[1111]))
    assert len({c.run_id for c in cells}) == len(spec.rows)
    base = cells[0]
    other_seed = expand(spec, "smoke", GridArgs(rows=[base.row], datasets=["meld"], seeds=[1112]))[0]
    other_profile = expand(spec, "paper", GridArgs(rows=[base.row], datasets=["meld"], seeds=[1111]), check_roots=False)[0]
    trusting = expand(spec, "smoke", GridArgs(rows=[base.row], datasets=["meld"], seeds=[1111], trust_remote_code=True))[0]
    assert len({base.run_id, other_seed.run_id, other_profile.run_id, trusting.run_id}) == 4


# ---- shards -------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_shards_are_disjoint_and_cover_the_grid(n):
    cells = expand(load_table("lora"), "smoke")
    parts = [shard(cells, i, n) for i in range(n)]
    ids = [{c.run_id for c in p} for p in parts]
    assert sum(len(p) for p in parts) == len(cells)
    assert set().union(*ids) == {c.run_id for c in cells}
    assert all(not (ids[i] & ids[j]) for i in range(n) for j in range(i + 1, n))
    if n == 3:
        assert all(parts), "72 runs over 3 shards: none should be empty"


def test_shard_and_seed_parsing_errors_name_the_flag():
    assert parse_shard("1/4") == (1, 4)
    assert parse_seeds("1111, 1112") == [1111, 1112]
    for bad in ("4/4", "x", "1-4", "0/0"):
        with pytest.raises(GridError, match="--shard"):
            parse_shard(bad)
    with pytest.raises(GridError, match="--seeds"):
        parse_seeds("a,b")
    with pytest.raises(GridError, match="twice"):
        parse_seeds("1,1")
    with pytest.raises(GridError):
        shard([], 2, 2)


# ---- profiles -----------------------------------------------------------------------------------

def test_smoke_profile_maps_backbones_to_tiny_twins_and_uses_the_smoke_settings():
    spec = load_table("backbone_swap")
    cells = {c.row: c.config for c in expand(spec, "smoke", GridArgs(datasets=["cherma"], seeds=[1111]))}
    assert {r: c.model.backbone for r, c in cells.items()} == {
        "GLM3-6B": "glm3-tiny", "GLM4-9B": "glm4-tiny", "Llama3-8B": "llama3-tiny"}
    cfg = cells["GLM3-6B"]
    assert (cfg.model.d_h, cfg.model.fusion_heads, cfg.model.model_path) == (64, 4, None)
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.max_steps) == (
        profiles.SMOKE_TRAIN["train.lr"], profiles.SMOKE_TRAIN["train.batch_size"], profiles.SMOKE_TRAIN["train.max_steps"])
    assert cfg.data.root == profiles.SMOKE_DATA_MARKER and cfg.data.name == "cherma" and cfg.seed == 1111


def test_a_row_that_sets_a_smoke_training_knob_keeps_its_value():
    spec = load_table("main_erc")
    row = type(spec.rows[0])(name="fast", overrides={"train.lr": 0.1})
    cfg = build_run_config("smoke", spec, row, "meld", 1)
    assert cfg.train.lr == 0.1 and cfg.train.batch_size == profiles.SMOKE_TRAIN["train.batch_size"]


def test_bad_row_override_names_the_table_file_and_row():
    spec = load_table("main_erc")
    row = type(spec.rows[0])(name="broken", overrides={"model.experts": ["E9"]})
    with pytest.raises(ConfigError, match=r"main_erc.toml: row 'broken': config field model.experts"):
        build_run_config("smoke", spec, row, "meld", 1)


def test_paper_profile_records_markers_and_its_hyperparameters(paper_roots):
    data, models = paper_roots
    spec = load_table("lora")
    cells = expand(spec, "paper", GridArgs(rows=["Llama3-8B LoRA off"], datasets=["meld", "mosei"], seeds=[1111], data_root=data, model_root=models))
    meld, mosei = cells[1].config, cells[0].config
    assert meld.model.backbone == "llama3" and meld.model.lora is False
    assert meld.model.model_path == "<model-root>/Meta-Llama-3-8B-Instruct" and meld.data.root == "<data-root>"
    assert (meld.train.lr, meld.train.batch_size, meld.train.adam_eps, meld.train.warmup_ratio) == (5e-5, 8, 1e-4, 0.1)
    assert (meld.train.patience, mosei.train.patience) == (8, 10)
    resolved = resolve_run_config(meld, data_root=data, model_root=models)
    assert resolved.data.root == str(data.resolve())
    assert resolved.model.model_path == str(models.resolve() / "Meta-Llama-3-8B-Instruct")
    # the run id does not depend on where the roots are
    elsewhere = expand(spec, "paper", GridArgs(rows=["Llama3-8B LoRA off"], datasets=["meld", "mosei"], seeds=[1111]), check_roots=False)
    assert [c.run_id for c in elsewhere] == [c.run_id for c in cells]


def test_paper_profile_without_roots_names_the_flag_and_the_env_var(paper_roots, monkeypatch):
    data, models = paper_roots
    spec = load_table("main_erc")
    with pytest.raises(ProfileError, match=r"--data-root DIR or set EGMF_DATA_ROOT"):
        expand(spec, "paper", GridArgs(model_root=models))
    with pytest.raises(ProfileError, match=r"--model-root DIR or set EGMF_MODEL_ROOT"):
        expand(spec, "paper", GridArgs(data_root=data))
    monkeypatch.setenv("EGMF_DATA_ROOT", str(data))
    monkeypatch.setenv("EGMF_MODEL_ROOT", str(models))
    assert len(expand(spec, "paper")) == 3 * 2 * 5  # the environment variables are enough (3 rows x 2 datasets x 5 seeds)
    (models / "chatglm3-6b").rmdir()
    with pytest.raises(ProfileError, match=r"backbone 'glm3' not found: expected directory .*chatglm3-6b"):
        expand(spec, "paper")
    with pytest.raises(ProfileError, match=r"data root .*nowhere \(from --data-root\) is not a directory"):
        expand(spec, "paper", GridArgs(data_root=data / "nowhere"))


def test_paper_statistics_need_the_data_root_only(paper_roots):
    data, _ = paper_roots
    cells = expand(load_table("datasets"), "paper", GridArgs(data_root=data))
    assert [c.config.model.model_path for c in cells] == [None] * 4
    assert resolve_run_config(cells[0].config, data_root=data).data.root == str(data.resolve())
    (data / "cherma").rmdir()
    with pytest.raises(ProfileError, match=r"dataset 'cherma' not found: expected directory .*cherma"):
        expand(load_table("datasets"), "paper", GridArgs(data_root=data))


def test_smoke_data_is_generated_once_under_the_repo_cache(smoke_repo):
    cfg = expand(load_table("main_erc"), "smoke", GridArgs(datasets=["meld"], seeds=[1111]))[0].config
    first = resolve_run_config(cfg)
    again = resolve_run_config(cfg)
    root = profiles.smoke_data_root()
    assert first.data.root == again.data.root == str(root)
    assert (root / "meld" / "data.txt").read_text() == "meld seed=0"
    assert smoke_repo == ["meld"]  # written on first use only
    assert not [p for p in root.iterdir() if p.is_dir() and p.name.startswith(".")]  # no temporary dir left
    assert cfg.data.root == profiles.SMOKE_DATA_MARKER  # the hashed config is untouched


def test_smoke_data_written_by_other_synth_code_is_regenerated(smoke_repo, monkeypatch):
    import egmf_core.data.synth as synth

    profiles.ensure_smoke_data("meld")
    (profiles.smoke_data_root() / "meld" / "data.txt").write_text("stale")
    profiles.ensure_smoke_data("meld")
    assert smoke_repo == ["meld"]  # the stamp matches this code: the data are reused as they are
    monkeypatch.setattr(synth, "fingerprint", lambda name, seed=0, size=None: "edited-constants")
    profiles.ensure_smoke_data("meld")
    assert smoke_repo == ["meld", "meld"]
    root = profiles.smoke_data_root()
    assert (root / "meld" / "data.txt").read_text() == "meld seed=0"
    assert (root / ".meld-0-None.stamp").read_text() == "edited-constants\n"
    profiles.ensure_smoke_data("meld")
    assert smoke_repo == ["meld", "meld"]


def test_smoke_data_version_follows_the_generator():
    from egmf_core.data.synth import SYNTH_VERSION

    assert profiles.SMOKE_DATA_VERSION == SYNTH_VERSION
