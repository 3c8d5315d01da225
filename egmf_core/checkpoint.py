"""Resumable mid-run checkpoints and the one atomic file writer; nothing read back can run code.

A run's checkpoint directory (the harness uses ``results/<profile>/checkpoints/<run_id>/``)::

    step-000012.safetensors  trainable weights at step 12: EGMF's modules and the LoRA adapters
    step-000012.pt           optimizer, scheduler, RNG states, loop state (FitState.to_dict():
                             step, data order, early-stopping counters, history); torch.save,
                             read back with torch.load(weights_only=True)
    best-000009.safetensors  the best-so-far trainable weights (selected at step 9): written only
                             when the best step changes, never a second copy inside the .pt
    latest.json              {"format", "tag", "step", "files": {name: sha256}}: written last

When: every ``every`` steps, every ``minutes`` of wall time, and at every validation pass
(``due(step, evaluated=True)``) once either is set; the harness uses minutes for GPU profiles.

Every file is written with :func:`atomic_write_bytes` (same-folder temp file, fsync, rename,
fsync of the folder), and ``latest.json`` only after both step files are complete, so a kill at
any moment (SIGKILL included) leaves either the previous checkpoint or the new one. The results
store writes through the same function; torch and numpy are imported on use, so importing this
module stays cheap. A pointer
whose files are missing, truncated (sha256) or from another configuration (``tag``) is ignored
with one warning line and the run starts from step 0. Stray ``*.tmp`` files are never read.

Exact resumption: the frozen backbone and EGMF are rebuilt from the run seed as usual, then the
checkpoint restores the trainable weights, AdamW's moments, the schedule, the shuffling
generator and what is left of the epoch's order, the best-so-far weights, the patience counter,
and the global torch / CUDA / numpy / Python RNG states (LoRA dropout draws from the global
one). On CPU a resumed run therefore gives the same final metrics as an uninterrupted one, bit
for bit (tests/test_checkpoint.py, tests/test_kill_resume.py).

What is and is not deterministic on GPU
---------------------------------------
* Same seed, same GPU model, same software: most of a run repeats, but not bit for bit by
  default. cuBLAS may pick a different reduction split per call unless its workspace is
  pinned (``CUBLAS_WORKSPACE_CONFIG=:4096:8`` or ``:16:8``, set before CUDA starts);
  backward passes of ``index_add_`` / ``scatter_add_`` / embedding lookups (the frozen
  embedding's gradient is off, but LoRA and attention kernels may use atomics) add floats in
  a scheduling-dependent order; flash / memory-efficient SDPA kernels have non-deterministic
  backward passes.
* bf16 autocast (``train.mixed_precision="auto"`` on CUDA) rounds every matmul to 8 bits of
  mantissa, so a last-bit difference from the points above grows into visibly different losses
  after some hundred steps, and greedy generation can then flip an answer token whose two top
  logits were close. Metrics agree closely, not exactly.
* Resuming from a checkpoint restores the CUDA RNG states too, so a resumed GPU run is as
  deterministic as an uninterrupted one, no more.
* What helps: ``torch.use_deterministic_algorithms(True)`` with
  ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (errors out on ops without a deterministic kernel, and
  is slower), ``torch.backends.cudnn.benchmark = False``, ``train.mixed_precision="no"``
  (fp32), and the same GPU model and driver/library versions (a different card, cuBLAS or
  cuDNN version changes kernels and so the last bits). Run files record device and versions.
* Never deterministic across hardware: CPU vs GPU, or two GPU models, give different numbers.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from egmf_core.atomic import AtomicWriteError, atomic_write_bytes, fsync_dir  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    import torch

CHECKPOINT_FORMAT = 2  # 2: best weights in their own file
POINTER = "latest.json"
_STEP_FILE = re.compile(r"^(step|best)-(\d{6,})\.(safetensors|pt)$")


class CheckpointError(ValueError):
    """A checkpoint setting is out of range (names the config field) or a checkpoint cannot be trusted."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- the training loop's state ---------------------------------------------------------------------

@dataclass
class FitState:
    """What fit()'s loop carries from one step to the next: all a checkpoint needs to continue it.

    Saved as a plain dict (:meth:`to_dict`, loadable with ``torch.load(weights_only=True)``) in the
    ``.pt`` file; ``best_state`` goes to its own ``best-*.safetensors`` file instead.
    """

    step: int = 0  # optimizer steps taken
    order: list[int] = field(default_factory=list)  # what is left of the epoch's shuffled order
    step_time: float = 0.0  # summed wall time of those steps, seconds
    best: float = -math.inf  # best validation score so far, negated for a lower-is-better metric
    best_step: int = 0
    bad_evals: int = 0  # validation passes since the last improvement (early stopping)
    history: list[dict] = field(default_factory=list)  # one dict per validation pass
    best_state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # the best step's trainable weights

    _KEYS = ("step", "order", "step_time", "best", "best_step", "bad_evals", "history")

    def to_dict(self) -> dict[str, Any]:
        """Every field but ``best_state``, as plain values (the format-2 ``loop`` entry)."""
        return {k: getattr(self, k) for k in self._KEYS}

    @classmethod
    def from_dict(cls, loop: dict[str, Any], best_state: dict[str, torch.Tensor] | None = None) -> FitState:
        """The state :meth:`to_dict` wrote; a missing field raises CheckpointError naming it."""
        missing = [k for k in cls._KEYS if k not in loop]
        if missing:
            raise CheckpointError(f"loop state has no {missing[0]!r}")
        return cls(**{k: loop[k] for k in cls._KEYS}, best_state=dict(best_state or {}))


# ---- RNG states ---------------------------------------------------------------------------------

def capture_rng(generator: torch.Generator) -> dict[str, Any]:
    """Every random state a training step draws from, as weights_only-loadable values."""
    import numpy as np
    import torch

    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
        "shuffle": generator.get_state(),  # the data order's own generator
    }


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate(state["python"])
    generator.set_state(state["shuffle"])


# ---- checkpoints --------------------------------------------------------------------------------

def trainable_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint stores of the model: trainable parameters (EGMF + LoRA) and EGMF's buffers."""
    out = {n: p for n, p in model.named_parameters() if p.requires_grad}
    out.update({n: b for n, b in model.named_buffers() if not n.startswith("llm.")})
    return out


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


class Checkpointer:
    """Saves a run's training state into ``directory`` and resumes from it.

    Saves every ``every`` steps, every ``minutes`` of wall time, and at validation passes when
    either is set. ``tag`` identifies the configuration (the resolved config's hash): a checkpoint
    written under another tag is ignored. With neither set it writes nothing but still resumes.
    """

    def __init__(self, directory: str | Path, *, every: int | None, tag: str, minutes: float | None = None,
                 log: Callable[[str], None] = _stderr):
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every <= 0):
            raise CheckpointError(f"config field train.checkpoint_every={every!r}: must be a positive number of "
                                  "steps or None (off)")
        if minutes is not None and not minutes > 0:
            raise CheckpointError(f"checkpoint minutes={minutes!r}: must be positive or None (off)")
        self.directory, self.every, self.tag, self.log = Path(directory), every, str(tag), log
        self.minutes = minutes
        self._last_save = time.monotonic()
        self._best_file: tuple[int, str, bytes] | None = None  # (best step, file name, sha256) last written

    def due(self, step: int, *, evaluated: bool = False) -> bool:
        """Whether to save after ``step``: its step cadence, its time interval, or a validation pass."""
        if self.every is None and self.minutes is None:
            return False
        if evaluated or (self.every is not None and step % self.every == 0):
            return True
        return self.minutes is not None and time.monotonic() - self._last_save >= 60 * self.minutes

    # -- save --

    def save(self, model: torch.nn.Module, optimizer, scheduler, generator: torch.Generator,
             state: FitState) -> Path:
        """Write step ``state.step`` (weights, best weights if they changed, state, then the pointer);
        drop older files. An empty ``state.best_state`` writes no best weights."""
        from safetensors.torch import save as safetensors_bytes

        step = state.step
        weights = {n: t.detach().to("cpu").contiguous() for n, t in trainable_tensors(model).items()}
        blobs = {
            f"step-{step:06d}.safetensors": safetensors_bytes(weights, metadata={"step": str(step), "tag": self.tag}),
            f"step-{step:06d}.pt": _torch_bytes({
                "step": int(step),
                "tag": self.tag,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": capture_rng(generator),
                "loop": {k: _cpu(v) for k, v in state.to_dict().items()},
            }),
        }
        for name, data in blobs.items():
            atomic_write_bytes(self.directory / name, data)
        files = {name: sha256_bytes(data) for name, data in blobs.items()}
        if state.best_state:
            files.update(self._save_best(state.best_state, int(state.best_step)))
        pointer = {"format": CHECKPOINT_FORMAT, "tag": self.tag, "step": int(step), "files": files}
        path = atomic_write_bytes(self.directory / POINTER, (json.dumps(pointer, indent=1) + "\n").encode())
        for old in self.directory.iterdir():
            if _STEP_FILE.match(old.name) and old.name not in files:
                with contextlib.suppress(OSError):
                    old.unlink()
        self._last_save = time.monotonic()
        return path

    def _save_best(self, best_state: dict[str, torch.Tensor], best_step: int) -> dict[str, str]:
        """The best weights' file: written when the best step changed since the last save."""
        from safetensors.torch import save as safetensors_bytes

        if self._best_file is None or self._best_file[0] != best_step:
            name = f"best-{best_step:06d}.safetensors"
            data = safetensors_bytes({n: t.detach().to("cpu").contiguous() for n, t in best_state.items()},
                                     metadata={"step": str(best_step), "tag": self.tag})
            atomic_write_bytes(self.directory / name, data)
            self._best_file = (best_step, name, sha256_bytes(data))
        return {self._best_file[1]: self._best_file[2]}

    # -- resume --

    def resume(self, model: torch.nn.Module, optimizer, scheduler, generator: torch.Generator
               ) -> FitState | None:
        """Restore the latest valid checkpoint into model, optimizer, scheduler and RNGs; its loop
        state, or None (no checkpoint, or one that cannot be trusted: one warning line). The
        state's ``best_state`` is empty when the checkpoint has no best weights."""
        pointer_path = self.directory / POINTER
        if not pointer_path.is_file():
            return None
        try:
            weights, state, weights_extra = self._read(pointer_path)
            fit_state = FitState.from_dict(state["loop"], weights_extra.get("best"))
            params = trainable_tensors(model)
            if set(weights) != set(params):
                extra = sorted(set(weights) ^ set(params))[0]
                raise CheckpointError(f"weights do not match the model ({extra!r})")
            wrong = next((n for n, t in params.items() if t.shape != weights[n].shape), None)
            if wrong is not None:
                raise CheckpointError(f"{wrong} has shape {tuple(weights[wrong].shape)}, the model "
                                      f"{tuple(params[wrong].shape)}")
        except (CheckpointError, OSError, RuntimeError, KeyError, ValueError, TypeError) as e:
            return self._refuse(pointer_path, e)
        # Restore everything or nothing: a half-restored run would silently differ from a fresh one.
        backup = ({n: t.detach().clone() for n, t in params.items()}, optimizer.state_dict(),
                  scheduler.state_dict(), capture_rng(generator))
        try:
            self._apply(params, weights, state["optimizer"], state["scheduler"], state["rng"],
                        optimizer, scheduler, generator)
        except (CheckpointError, RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:
            self._apply(params, *backup, optimizer, scheduler, generator)
            return self._refuse(pointer_path, e)
        self.log(f"resuming from {self.directory} at step {state['step']}")
        return fit_state

    @staticmethod
    def _apply(params, weights, optimizer_state, scheduler_state, rng_state, optimizer, scheduler, generator) -> None:
        import torch

        with torch.no_grad():
            for name, tensor in params.items():
                tensor.copy_(weights[name])
        optimizer.load_state_dict(optimizer_state)
        scheduler.load_state_dict(scheduler_state)
        restore_rng(rng_state, generator)

    def _refuse(self, pointer_path: Path, err: BaseException) -> None:
        self.log(f"warning: {pointer_path}: checkpoint not used ({' '.join(str(err).split())[:300]}); "
                 "starting the run from step 0")
        return None

    def _read(self, pointer_path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
        import torch
        from safetensors.torch import load as safetensors_load

        try:
            pointer = json.loads(pointer_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"unreadable pointer ({e})") from None
        if pointer.get("format") != CHECKPOINT_FORMAT or pointer.get("tag") != self.tag:
            raise CheckpointError(f"written for another configuration or format (tag {pointer.get('tag')!r})")
        blobs, extra = {}, {}
        for name, digest in (pointer.get("files") or {}).items():
            if not _STEP_FILE.match(name):
                raise CheckpointError(f"unexpected file name {name!r}")
            data = (self.directory / name).read_bytes()
            if sha256_bytes(data) != digest:
                raise CheckpointError(f"{name} does not match its sha256 (truncated or edited)")
            if name.startswith("best-"):
                extra["best"] = data
            else:
                blobs[name.rsplit(".", 1)[1]] = data
        if set(blobs) != {"safetensors", "pt"}:
            raise CheckpointError("pointer does not name a weights file and a state file")
        weights = safetensors_load(blobs["safetensors"])
        state = torch.load(io.BytesIO(blobs["pt"]), map_location="cpu", weights_only=True)
        if state.get("tag") != self.tag or state.get("step") != pointer.get("step"):
            raise CheckpointError("state file does not belong to the pointer")
        return weights, state, {k: safetensors_load(v) for k, v in extra.items()}

    def clear(self) -> None:
        """Delete the checkpoint directory (the run's result is safely stored)."""
        remove_checkpoint(self.directory)


def remove_checkpoint(directory: str | Path) -> None:
    """Delete a run's checkpoint directory and everything in it; a missing one is fine."""
    import shutil

    shutil.rmtree(directory, ignore_errors=True)


def _torch_bytes(obj: Any) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _cpu(value: Any) -> Any:
    """Tensors to CPU (nested in dicts and lists) so a checkpoint loads on any machine."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu")
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu(v) for v in value)
    return value
