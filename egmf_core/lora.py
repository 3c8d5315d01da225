"""Grouped LoRA: one frozen backbone, the LoRA adapters of several runs, one batched op per layer.

A run group (egmf_core/group.py) trains K runs over ONE copy of the frozen weights. Each run
owns its adapters (:class:`LoRAAdapters`, held by the run's EGMF module, never by the backbone);
the backbone's targeted Linear layers are wrapped once by :class:`GroupedLoRALinear`. While a
group forward runs, :class:`LoRARouter` says which adapters are active and which batch rows
belong to which run ("slots": slot k owns rows ``[k * rows, (k + 1) * rows)``); each wrapped
layer then adds, in one pair of ``bmm``s over the slots that have an adapter there,

    y = W x + (alpha / r) * B (A dropout(x))            (LoRA; W frozen, A: r x in, B: out x r)

A slot without an adapter (a LoRA-off run) gets ``W x`` only. With no router plan active the
wrapped layer is the frozen Linear. Initialisation, scaling and dropout follow peft's LoRA for
one adapter exactly (tests/test_group.py checks outputs and gradients against peft).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from egmf_core.config import ModelConfig


def _key(path: str) -> str:
    """A module path as a parameter name (nn.ParameterDict keys cannot hold dots)."""
    return path.replace(".", "__")


def lora_target_paths(backbone: nn.Module, targets: list[str]) -> list[str]:
    """The module paths of the backbone's Linear layers whose leaf name is a LoRA target, in
    ``named_modules`` order (peft's order, which its init draws follow)."""
    paths = []
    for path, mod in backbone.named_modules():
        if path.rsplit(".", 1)[-1] in targets and isinstance(mod, (nn.Linear, GroupedLoRALinear)):
            paths.append(path)
    return paths


class LoRAAdapters(nn.Module):
    """One run's LoRA adapters: A (r, in) and B (out, r) per targeted Linear, with its scaling.

    Drawn under ``torch.manual_seed(seed)`` in the order and with the calls peft's
    ``get_peft_model`` makes for one adapter (nn.Linear(in, r) and nn.Linear(r, out) are built,
    then A is redrawn with kaiming_uniform(a=sqrt(5)) and B set to zero), so a run starts from
    the adapters it would have had alone. Kept in float32, as peft keeps them.
    """

    def __init__(self, backbone: nn.Module, cfg: ModelConfig, targets: list[str], seed: int):
        super().__init__()
        self.paths = lora_target_paths(backbone, targets)
        self.r, self.scaling, self.dropout = cfg.lora_r, cfg.lora_alpha / cfg.lora_r, cfg.lora_dropout
        self.weights = nn.ParameterDict()
        modules = dict(backbone.named_modules())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for path in self.paths:
                base = modules[path]
                base = base.base_layer if isinstance(base, GroupedLoRALinear) else base
                lora_a = nn.Linear(base.in_features, self.r, bias=False)  # draws, as peft's nn.Linear does
                lora_b = nn.Linear(self.r, base.out_features, bias=False)
                nn.init.kaiming_uniform_(lora_a.weight, a=math.sqrt(5))
                nn.init.zeros_(lora_b.weight)
                device = base.weight.device
                self.weights[_key(path) + "__A"] = nn.Parameter(lora_a.weight.detach().to(device))  # (r, in)
                self.weights[_key(path) + "__B"] = nn.Parameter(lora_b.weight.detach().to(device))  # (out, r)

    def pair(self, path: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(A, B) of the layer at ``path``, or None when this run has no adapter there."""
        a = self.weights[_key(path) + "__A"] if _key(path) + "__A" in self.weights else None
        return None if a is None else (a, self.weights[_key(path) + "__B"])


class SlotRNG:
    """A run's own stream of the global torch RNG (CPU, and the current CUDA device's), swapped
    in while that run draws dropout masks, so its draws are the ones it would make alone."""

    def __init__(self, cuda: bool):
        self.cuda = cuda and torch.cuda.is_available()
        self.capture()

    def capture(self) -> None:
        """Take the current global state as this run's."""
        self.cpu = torch.get_rng_state()
        self.gpu = torch.cuda.get_rng_state() if self.cuda else None

    def restore(self) -> None:
        """Make this run's state the global one."""
        torch.set_rng_state(self.cpu)
        if self.cuda:
            torch.cuda.set_rng_state(self.gpu)

    @contextlib.contextmanager
    def active(self):
        outer_cpu = torch.get_rng_state()
        outer_gpu = torch.cuda.get_rng_state() if self.cuda else None
        self.restore()
        try:
            yield
        finally:
            self.capture()
            torch.set_rng_state(outer_cpu)
            if self.cuda:
                torch.cuda.set_rng_state(outer_gpu)


@dataclass
class SlotLayout:
    """How a group batch's rows are laid out: ``rows`` per slot, and each slot's real extent
    (its own batch size and sequence length) for drawing dropout masks of the solo shape."""

    rows: int  # rows per slot (the largest slot batch); slot k owns rows [k * rows, (k + 1) * rows)
    extents: list[tuple[int, int]]  # per slot: (its batch size B_k, its own length L_k)


@dataclass
class LayerPlan:
    """The stacked adapters of one wrapped layer for the active slots that have one there."""

    slots: torch.Tensor | None  # (K_l,) slot indices; None = every slot, in order
    slot_list: list[int]
    a_t: torch.Tensor  # (K_l, in, r) stacked A^T
    b_t: torch.Tensor  # (K_l, r, out) stacked (alpha / r) B^T
    dropout: list[float]  # per listed slot


class LoRARouter:
    """The "active slots" of a backbone: which run's adapters apply to which rows, per forward."""

    def __init__(self):
        self.plans: dict[str, LayerPlan] | None = None
        self.layout: SlotLayout | None = None
        self.rngs: list[SlotRNG | None] = []

    @contextlib.contextmanager
    def activate(self, adapters: list[LoRAAdapters | None], layout: SlotLayout, rngs: list[SlotRNG | None] | None = None):
        """Within the block, wrapped layers apply ``adapters[k]`` to slot k's rows (None: no LoRA)."""
        self.plans, self.layout = _stack_plans(adapters), layout
        self.rngs = rngs or [None] * len(adapters)
        try:
            yield self
        finally:
            self.plans, self.layout, self.rngs = None, None, []


def _stack_plans(adapters: list[LoRAAdapters | None]) -> dict[str, LayerPlan]:
    """Per wrapped layer, the slots with an adapter and their A^T / B^T stacked (padded to the
    largest r with zeros, which adds exact zeros)."""
    paths = {p for ad in adapters if ad is not None for p in ad.paths}
    plans = {}
    for path in paths:
        slots = [k for k, ad in enumerate(adapters) if ad is not None and ad.pair(path) is not None]
        pairs = [adapters[k].pair(path) for k in slots]
        r = max(a.shape[0] for a, _ in pairs)
        a_t = torch.stack([F.pad(a, (0, 0, 0, r - a.shape[0])).t() for a, _ in pairs])  # (K_l, in, r)
        # (alpha / r) B^T, scaled here on (r, out) rather than on every row's delta (peft scales the delta:
        # the same product, rounded once differently)
        b_t = torch.stack([F.pad(b, (0, r - b.shape[1])).t() * adapters[k].scaling for k, (_, b) in zip(slots, pairs)])
        every = slots == list(range(len(adapters)))
        plans[path] = LayerPlan(None if every else torch.tensor(slots, device=a_t.device), slots, a_t, b_t,
                                [adapters[k].dropout for k in slots])
    return plans


class GroupedLoRALinear(nn.Module):
    """A frozen nn.Linear plus the active slots' LoRA deltas, one bmm pair for all of them."""

    def __init__(self, base_layer: nn.Linear, path: str, router: LoRARouter):
        super().__init__()
        self.base_layer = base_layer
        self.path = path
        self.router = router

    @property
    def weight(self) -> torch.Tensor:  # code that reads a Linear's weight (dtype, device) still works
        return self.base_layer.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)  # W x for every row: (N, L, out)
        plans = self.router.plans
        plan = None if plans is None else plans.get(self.path)
        if plan is None:
            return y
        n_slots = len(self.router.layout.extents)
        x3 = x.reshape(n_slots, -1, x.shape[-1])  # (K, rows * L, in)
        xs = x3 if plan.slots is None else x3.index_select(0, plan.slots)  # (K_l, rows * L, in)
        xs = self._dropout(xs.to(plan.a_t.dtype), x.shape, plan)
        delta = torch.bmm(torch.bmm(xs, plan.a_t), plan.b_t)  # (alpha / r) B A x: (K_l, rows * L, out)
        y3 = y.reshape(n_slots, -1, y.shape[-1])
        delta = delta.to(y.dtype)
        y3 = y3 + delta if plan.slots is None else y3.index_add(0, plan.slots, delta)
        return y3.reshape(y.shape)

    def _dropout(self, xs: torch.Tensor, shape: torch.Size, plan: LayerPlan) -> torch.Tensor:
        """LoRA dropout per slot, drawn from the slot's own RNG over its own (B_k, L_k, in) extent,
        the shape its solo run draws (padded rows and positions get zeros: they are never read)."""
        if not self.training or not any(p > 0 for p in plan.dropout):
            return xs
        layout, rows, length = self.router.layout, self.router.layout.rows, shape[-2] if len(shape) == 3 else 1
        out = []
        for j, k in enumerate(plan.slot_list):
            x4 = xs[j].view(rows, length, -1)
            if plan.dropout[j] == 0:
                out.append(xs[j])
                continue
            b_k, l_k = layout.extents[k]
            rng = self.router.rngs[k]
            with rng.active() if rng is not None else contextlib.nullcontext():
                dropped = F.dropout(x4[:b_k, :l_k].contiguous(), plan.dropout[j], True)
            out.append(F.pad(dropped, (0, 0, 0, length - l_k, 0, rows - b_k)).view(rows * length, -1))
        return torch.stack(out)


def install_grouped_lora(backbone: nn.Module, targets: list[str], router: LoRARouter | None = None) -> LoRARouter:
    """Wrap each targeted Linear of the backbone once (in place; a layer already wrapped is kept)
    and return the backbone's router (``router``, or a new one)."""
    router = router or LoRARouter()
    for path in lora_target_paths(backbone, targets):
        parent_path, _, leaf = path.rpartition(".")
        parent = backbone.get_submodule(parent_path) if parent_path else backbone
        layer = getattr(parent, leaf)
        if not isinstance(layer, GroupedLoRALinear):
            setattr(parent, leaf, GroupedLoRALinear(layer, path, router))
    return router
