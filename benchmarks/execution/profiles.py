"""Profiles: where data and weights come from and how big the model is ("smoke" | "paper").

A run's config is built in one order, so a table differs from another only in its TOML and a
profile only in sizes and sources::

    profile_base(profile, dataset) -> table.base -> row.overrides -> profile mapping -> seed

Locations are recorded as markers, never as this machine's paths, so a run's id (the hash of
its config) does not depend on where the repo, the data or the weights live, and shards run on
different machines merge cleanly:

* ``<repo>/.cache/smoke-data``: the smoke profile's synthetic twins, written on first use;
* ``<data-root>``: ``--data-root`` or ``$EGMF_DATA_ROOT`` (paper profile);
* ``<model-root>/<family dir>``: ``--model-root`` or ``$EGMF_MODEL_ROOT`` (paper profile).

``resolve_run_config`` turns markers into paths right before a run; the run file's provenance
records the real locations.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

from egmf_core.config import DATASETS, DEFAULT_PATIENCE, ConfigError, RunConfig, apply_overrides
from egmf_core.data import find_dataset_folder
from egmf_core.data.dataset import SPECS
from egmf_core.paths import DATA_ROOT_ENV, FAMILY_DIRS, MODEL_ROOT_ENV, REPO_MARKER, REPO_ROOT, expand_repo_marker


class CellInputs(Protocol):
    """What a cell's config takes from the command beyond its table row (``grid.GridArgs`` is one)."""

    overrides: dict[str, Any] | None  # ``--set``, checked by ``grid.parse_sets``
    data_root: str | Path | None
    model_root: str | Path | None
    trust_remote_code: bool


@dataclasses.dataclass(frozen=True)
class _NoInputs:
    overrides: dict[str, Any] | None = None
    data_root: str | Path | None = None
    model_root: str | Path | None = None
    trust_remote_code: bool = False

PROFILES = ("smoke", "scale", "paper")
SYNTHETIC_PROFILES = ("smoke", "scale")  # synthetic data and random weights: never the paper's numbers
GPU_PROFILES = ("scale", "paper")  # a run fills (a share of) one GPU
SEEDS_FROM = {"scale": "paper"}  # a profile without seeds of its own in a table file runs these
DATA_ROOT_MARKER = "<data-root>"
MODEL_ROOT_MARKER = "<model-root>"
SMOKE_DATA_VERSION = 5  # = egmf_core.data.synth.SYNTH_VERSION (checked by a test; no import: keeps this light)
SMOKE_DATA_MARKER = f"{REPO_MARKER}/.cache/smoke-data/v{SMOKE_DATA_VERSION}"
SCALE_DATA_MARKER = f"{REPO_MARKER}/.cache/scale-data/v{SMOKE_DATA_VERSION}"  # synth --full shapes

# Paper profile: backbone -> directory under the model root holding the HF checkpoint.
MODEL_DIRS: dict[str, str] = {family: names[0] for family, names in FAMILY_DIRS.items()}

# Smoke profile: each paper backbone maps to its randomly initialised tiny twin.
SMOKE_BACKBONES: dict[str, str] = {"glm3": "glm3-tiny", "glm4": "glm4-tiny", "llama3": "llama3-tiny"}
# Scale profile: the published architectures with random weights, on full-size synthetic data,
# with the paper profile's training settings: every CUDA path of a paper run, without the weights.
SCALE_BACKBONES: dict[str, str] = {"glm3": "glm3-full", "glm4": "glm4-full", "llama3": "llama3-full"}
# Intra-op threads of one run: 1 for the smoke profile (tiny matrices: a second thread buys nothing,
# and on a busy 2-core machine OpenMP's spin-waiting made a step 20x slower, 77 ms vs 1.8 s);
# torch's default elsewhere. $EGMF_TORCH_THREADS overrides it (run_threads).
RUN_THREADS: dict[str, int | None] = {"smoke": 1, "scale": None, "paper": None}
# Resumable checkpoints every this many minutes (and at every validation pass) for GPU runs.
CHECKPOINT_MINUTES: dict[str, float | None] = {"smoke": None, "scale": 30.0, "paper": 30.0}

# Smoke profile model size: small enough for a laptop CPU, same code path as the paper model.
SMOKE_MODEL: dict[str, Any] = {"model.d_h": 64, "model.fusion_heads": 4}

# Smoke profile sizes of the baselines (model.method), applied only to their rows: as EGMF's d_h
# 256 -> 64, MSE-Adapter's width 256 -> 64; TFN's widths about a quarter of the paper's, so that its
# fusion layer (d_l+1)(d_a+1)(d_v+1) is 9,537 wide, not 140,481 (at the paper's sizes a smoke step
# took 280 ms, 114 s a run, on this 2-core machine; an EGMF step takes ~50 ms).
SMOKE_BASELINE_MODEL: dict[str, dict[str, Any]] = {
    "mse_adapter": {"model.mse_d_mix": 64},
    "tfn": {"model.tfn_text_embed_dim": 64, "model.tfn_text_hidden": 32, "model.tfn_text_out": 32,
            "model.tfn_audio_hidden": 16, "model.tfn_vision_hidden": 16, "model.tfn_post_fusion_dim": 32},
}

# Smoke profile training: first guesses for a few-minute CPU grid on synthetic data, so that
# real effects (a modality carrying the label) still show. The lead tunes these numbers.
# A table or row that sets one of these keys itself keeps its own value.
SMOKE_TRAIN: dict[str, Any] = {
    # Tuned on the synthetic twins (seed 1111, 2-core CPU): lr 2e-3 had not learned the text cue
    # after 150 steps, 1e-2 collapsed to the majority class, and fusion_lr 1.5e-2 was worse than
    # 5e-3 on MOSEI and MELD. With 200 steps the full model had not yet learned to use audio and
    # visual (a draft of SYNTH_VERSION 4 with 240 samples: MOSEI valid MAE 0.71-0.82, about what
    # text alone gives); 400 steps (~30 ms each) brought it to 0.64-0.66, most runs still
    # improving at the end. Evaluating every 100 steps instead of 50 halves the validation
    # passes. EGMF's own
    # dropout stays at the model default (0.1): without it the full model memorised the noisy
    # audio/visual features of the training samples (MOSEI test corr -0.03 vs 0.28 with it).
    "train.lr": 5e-3,
    "train.fusion_lr": 5e-3,
    "train.batch_size": 16,
    "train.max_steps": 400,
    "train.eval_every": 100,
    "train.patience": 2,  # validation passes without improvement
    "model.lora_dropout": 0.0,  # peft then skips its dropout op: ~10% of a tiny step
}

# Paper profile training [P] (egmf.md): AdamW eps 1e-4, lr 5e-5, batch 8, cosine with 10% warmup;
# early stopping after 8 (ERC) or 10 (MSA) epochs without improvement on the key metric.
PAPER_TRAIN: dict[str, Any] = {
    "train.lr": 5e-5,
    "train.batch_size": 8,
    "train.adam_eps": 1e-4,
    "train.warmup_ratio": 0.1,
    "train.mixed_precision": "auto",
}

class ProfileError(ValueError):
    """A profile is unknown or cannot run (a missing data or model root); the message says how to fix it."""


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ProfileError(f"unknown profile {profile!r} (known: {', '.join(PROFILES)})")
    return profile


def run_threads(profile: str) -> int | None:
    """The intra-op threads a run of ``profile`` uses: ``$EGMF_TORCH_THREADS``, else RUN_THREADS."""
    n = os.environ.get("EGMF_TORCH_THREADS")
    return int(n) if n else RUN_THREADS.get(profile)


def profile_base(profile: str, dataset: str) -> RunConfig:
    """The profile's starting config for a dataset, before any table or row override."""
    check_profile(profile)
    if dataset not in DATASETS:
        raise ProfileError(f"unknown dataset {dataset!r} (known: {', '.join(DATASETS)})")
    gpu = {**PAPER_TRAIN, "train.patience": DEFAULT_PATIENCE[SPECS[dataset].task]} if profile in GPU_PROFILES else {}
    return apply_overrides(RunConfig(profile=profile), {"data.name": dataset, **gpu})  # validated there, once


def build_run_config(profile: str, table, row, dataset: str, seed: int, *, inputs: CellInputs | None = None,
                     check_roots: bool = True) -> RunConfig:
    """The config of one grid cell (``table`` a TableSpec, ``row`` one of its Rows).

    ``inputs.overrides`` (``reproduce --set``, checked by ``grid.parse_sets``) come after the
    row's and count as explicit like them: the profile mapping never undoes one (smoke's 400
    steps yield to ``--set train.max_steps=3``), and a paper backbone named there still maps to
    its smoke twin. The keys the mapping always owns (seed, dataset, roots) have their own flags.

    With ``check_roots`` the paper profile fails here, before any training, when its data or
    model root (``inputs.data_root``, ``inputs.model_root``, else the environment) is missing;
    the config itself holds only markers (see the module docstring).
    """
    inputs = inputs or _NoInputs()
    where = f"{table.path or table.name}: row {row.name!r}"
    overrides = {**table.base, **row.overrides, **(inputs.overrides or {})}  # later wins: base < row < --set
    base = profile_base(profile, dataset)
    backbone = overrides.get("model.backbone", base.model.backbone)
    method = overrides.get("model.method", base.model.method)
    mapping: dict[str, Any] = {"seed": int(seed), "data.name": dataset,
                               "model.trust_remote_code": bool(inputs.trust_remote_code),
                               **_profile_mapping(profile, table.trains, backbone, set(overrides), where),
                               **_smoke_baseline_sizes(profile, method, set(overrides))}
    if check_roots and profile == "paper":
        backbones = [backbone] if table.trains else []
        check_paper_roots(inputs.data_root, inputs.model_root if table.trains else None, datasets=[dataset],
                          backbones=backbones)
    return _apply(base, {**overrides, **mapping}, where)  # one validation of the cell's config


def _profile_mapping(profile: str, trains: bool, backbone: str, explicit: set[str], where: str) -> dict[str, Any]:
    """The fields a profile owns: backbone (twin), weights and data root as markers, and smoke's
    sizes except those the table, row or ``--set`` name (``explicit``)."""
    if profile == "smoke":
        sizes = {k: v for k, v in {**SMOKE_MODEL, **SMOKE_TRAIN}.items() if k not in explicit}
        return {"model.backbone": SMOKE_BACKBONES.get(backbone, backbone), "model.model_path": None,
                "data.root": SMOKE_DATA_MARKER, **sizes}
    if profile == "scale":
        return {"model.backbone": SCALE_BACKBONES.get(backbone, backbone), "model.model_path": None,
                "data.root": SCALE_DATA_MARKER}
    if not trains:  # the statistics table reads data only: no weights needed
        return {"model.model_path": None, "data.root": DATA_ROOT_MARKER}
    if backbone not in MODEL_DIRS:
        raise ConfigError(f"{where}: backbone {backbone!r} has no weights for the paper profile "
                          f"(known: {', '.join(MODEL_DIRS)})")
    return {"model.model_path": f"{MODEL_ROOT_MARKER}/{MODEL_DIRS[backbone]}", "data.root": DATA_ROOT_MARKER}


def _smoke_baseline_sizes(profile: str, method: str, explicit: set[str]) -> dict[str, Any]:
    """The smoke sizes of a baseline row (SMOKE_BASELINE_MODEL), except those named explicitly."""
    sizes = SMOKE_BASELINE_MODEL.get(method, {}) if profile == "smoke" else {}
    return {k: v for k, v in sizes.items() if k not in explicit}


def _apply(cfg: RunConfig, overrides: dict[str, Any], where: str) -> RunConfig:
    try:
        return apply_overrides(cfg, overrides)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


# ---- roots --------------------------------------------------------------------------------------

def data_root_from(data_root: str | Path | None) -> Path:
    """The paper data root: the argument, else $EGMF_DATA_ROOT; a one-line error if neither."""
    return _root(data_root, DATA_ROOT_ENV, "--data-root", "data")


def model_root_from(model_root: str | Path | None) -> Path:
    """The paper model root: the argument, else $EGMF_MODEL_ROOT; a one-line error if neither."""
    return _root(model_root, MODEL_ROOT_ENV, "--model-root", "model")


def _root(value: str | Path | None, env: str, flag: str, what: str) -> Path:
    raw = value if value not in (None, "") else os.environ.get(env) or None
    if raw is None:
        raise ProfileError(f"the paper profile needs a {what} root: pass {flag} DIR or set {env}")
    path = Path(raw).expanduser()
    origin = flag if value not in (None, "") else f"${env}"
    if not path.is_dir():
        raise ProfileError(f"{what} root {path} (from {origin}) is not a directory")
    return path.resolve()


def check_paper_roots(data_root, model_root, *, datasets, backbones) -> None:
    """Fail early, naming the flag, when a dataset or a backbone's weights are not where expected."""
    droot = data_root_from(data_root)
    for name in datasets:
        if find_dataset_folder(name, droot) is None:  # root/<name>, or MSE-Adapter's MELD/, CHERMA0723/
            raise ProfileError(f"dataset {name!r} not found: expected directory {droot / name} "
                               f"(--data-root / ${DATA_ROOT_ENV})")
    if not backbones:
        return
    mroot = model_root_from(model_root)
    for backbone in backbones:
        path = mroot / MODEL_DIRS[backbone]
        if not path.is_dir():
            raise ProfileError(f"weights for backbone {backbone!r} not found: expected directory {path} "
                               f"(--model-root / ${MODEL_ROOT_ENV})")


# ---- markers -> paths ---------------------------------------------------------------------------

def smoke_data_root(full: bool = False) -> Path:
    """Where the synthetic datasets live: <repo>/.cache/smoke-data/v<version> (scale-data: full shapes)."""
    return REPO_ROOT / ".cache" / ("scale-data" if full else "smoke-data") / f"v{SMOKE_DATA_VERSION}"


def write_synthetic_dataset(name: str, out_dir: Path, *, seed: int, size: int | None, full: bool = False) -> Path:
    """Write one synthetic twin under out_dir/<name> (tests swap this for a fake)."""
    from egmf_core.data.synth import write_synthetic

    return write_synthetic(name, out_dir, seed=seed, size=size, **({"full": True} if full else {}))


def ensure_smoke_data(name: str, *, seed: int = 0, size: int | None = None, full: bool = False) -> Path:
    """The smoke data root (``full``: the scale profile's, at the real shapes and sizes), with
    dataset ``name`` generated there on first use.

    A stamp beside the dataset (``.<name>-<seed>-<size>.stamp``) holds ``synth.fingerprint``:
    data written by other synth code (edited without a SYNTH_VERSION bump, as happened once while
    tuning) are regenerated instead of silently reused. Processes starting together (shards,
    ``--jobs`` workers) take turns on a lock file, so one writes and the others reuse; a dataset
    is written into a temporary sibling and renamed, so a kill never leaves half of one.
    """
    import fcntl

    from egmf_core.atomic import atomic_write_bytes
    from egmf_core.data.synth import fingerprint

    root = smoke_data_root(full)
    target = root / name
    stamp = root / f".{name}-{seed}-{size}.stamp"
    want = fingerprint(name, seed, size) + ("-full" if full else "")

    def current() -> bool:
        return target.is_dir() and any(target.iterdir()) and stamp.is_file() and stamp.read_text().strip() == want

    if current():
        return root
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when its process dies
        if current():  # written by the process that held the lock before us
            return root
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            write_synthetic_dataset(name, tmp, seed=seed, size=size, **({"full": True} if full else {}))
            if target.exists():
                os.replace(target, tmp / "stale")
            os.replace(tmp / name, target)
            atomic_write_bytes(stamp, (want + "\n").encode())
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def resolve_path(value: str | None, *, data_root=None, model_root=None) -> str | None:
    """Replace a location marker by this machine's path (other strings pass through)."""
    if value is None:
        return None
    if value.startswith(REPO_MARKER):
        return str(expand_repo_marker(value, REPO_ROOT))
    if value.startswith(DATA_ROOT_MARKER):
        return str(data_root_from(data_root) / value[len(DATA_ROOT_MARKER):].lstrip("/"))
    if value.startswith(MODEL_ROOT_MARKER):
        return str(model_root_from(model_root) / value[len(MODEL_ROOT_MARKER):].lstrip("/"))
    return value


def resolve_run_config(cfg: RunConfig, *, data_root=None, model_root=None, strict_data: bool = False) -> RunConfig:
    """The config a run actually receives: markers replaced by paths, smoke data generated if missing,
    ``data.strict`` set by ``--strict-data`` (a check on the input, like the roots: not in the run id)."""
    if cfg.data.root in (SMOKE_DATA_MARKER, SCALE_DATA_MARKER):
        ensure_smoke_data(cfg.data.name, seed=cfg.data.synth_seed, size=cfg.data.synth_size,
                          full=cfg.data.root == SCALE_DATA_MARKER)
    data = dataclasses.replace(cfg.data, root=resolve_path(cfg.data.root, data_root=data_root, model_root=model_root),
                               strict=cfg.data.strict or strict_data)
    model = dataclasses.replace(
        cfg.model, model_path=resolve_path(cfg.model.model_path, data_root=data_root, model_root=model_root)
    )
    return dataclasses.replace(cfg, data=data, model=model)


def model_source(cfg: RunConfig) -> str:
    """Where a (resolved) config's backbone weights come from, for provenance."""
    if cfg.model.model_path:
        return str(cfg.model.model_path)
    return f"random init ({cfg.model.backbone}, no pretrained weights)"
