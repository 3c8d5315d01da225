"""What gpu-check's phases share: the check's run config and dataset, the profiler's event names,
and freeing a device between phases (benchmarks/perf/gpu_check.py, gpu_check_groups.py)."""

from __future__ import annotations

LAUNCH_EVENTS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")
SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
CHECK_DATASET = "meld"  # classification: both generation and label scoring apply; 65-token utterances


def check_config(family: str, size: str):
    """The run config of the check: the paper profile's training settings on the chosen twin."""
    from egmf_core.config import RunConfig, apply_overrides, validate

    base = validate(RunConfig(profile="scale" if size == "full" else "smoke"))
    # The paper's lr on real weights; the tiny twins need the smoke lr to show a falling loss in 10 steps.
    return apply_overrides(base, {
        "model.backbone": f"{family}-{size}", "data.name": CHECK_DATASET, "train.batch_size": 8,
        "train.lr": 5e-5 if size == "full" else 5e-3, "train.fusion_lr": None if size == "full" else 5e-3, "train.adam_eps": 1e-4, "train.eval_batch_size": 32, "train.mixed_precision": "auto",
    })


def free_device(device) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
