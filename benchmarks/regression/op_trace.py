"""Hash every aten op's float output during a short run: where two machines' numbers part.

    python -m benchmarks.regression.op_trace OUT.tsv [reproduce args...]
    python -m benchmarks.regression.op_trace --compare A.tsv B.tsv

The default run is `reproduce main_msa --datasets sims_v2 --seeds 1114 --set train.max_steps=3`
into a throw-away results root (about 47k ops). Each line: call index, op, dtype, shape, and
the sha1 of the output's bytes. ``--compare`` prints "identical over N lines" or the first line
that differs, with context; run the same command on two machines (or natively and under
``qemu-x86_64 -cpu Haswell``, an Intel AVX2 CPU emulated in software) and compare. The run is
the CLI's, so the numerics are pinned as in any harness run; ``--aten-sqrt`` leaves torch's own
CPU sqrt in place (the kernel that made machines differ, issue 21) to show what the pin changes.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile

DEFAULT_RUN = ("reproduce", "main_msa", "--datasets", "sims_v2", "--seeds", "1114", "--set", "train.max_steps=3",
               "--force", "--no-report", "--no-estimate", "--jobs", "1")


def compare(a: str, b: str) -> int:
    """0 when the traces are equal line for line, else 1, after printing the first difference."""
    la, lb = open(a).read().splitlines(), open(b).read().splitlines()
    for i, (x, y) in enumerate(zip(la, lb)):
        if x != y:
            print(f"first difference at line {i}:")
            for j in range(max(0, i - 5), min(i + 3, len(la), len(lb))):
                mark = ">>" if j == i else "  "
                print(f"{mark} A {la[j]}\n{mark} B {lb[j]}")
            return 1
    print(f"identical over {min(len(la), len(lb))} lines ({len(la)} vs {len(lb)})")
    return 0 if len(la) == len(lb) else 1


def trace(out: str, args: list[str]) -> int:
    """Run the CLI with ``args`` under a dispatch mode that hashes each float CPU output into ``out``."""
    from benchmarks.execution import numerics

    numerics.pin()  # as the CLI does, before torch's first op
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from benchmarks import cli

    calls = [0]
    with open(out, "w") as f:

        class Trace(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, a=(), kw=None):
                r = func(*a, **(kw or {}))
                if str(func).startswith(("aten.empty", "aten.new_empty")):  # uninitialised memory
                    return r
                for t in r if isinstance(r, (tuple, list)) else (r,):
                    if isinstance(t, torch.Tensor) and t.is_floating_point() and t.device.type == "cpu":
                        digest = hashlib.sha1(t.detach().contiguous().numpy().tobytes()).hexdigest()[:16]
                        f.write(f"{calls[0]}\t{func}\t{t.dtype}\t{tuple(t.shape)}\t{digest}\n")
                        calls[0] += 1
                return r

        with Trace():
            rc = cli.main(args)
    print(f"{calls[0]} op outputs hashed -> {out}")
    return rc or 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--compare"] and len(argv) == 3:
        return compare(argv[1], argv[2])
    if not argv or argv[0].startswith("-") and argv[0] != "--aten-sqrt":
        print("usage: python -m benchmarks.regression.op_trace [--aten-sqrt] OUT.tsv [reproduce args...]\n"
              "       python -m benchmarks.regression.op_trace --compare A.tsv B.tsv", file=sys.stderr)
        return 2
    if "--aten-sqrt" in argv:
        argv = [a for a in argv if a != "--aten-sqrt"]
        from benchmarks.execution import numerics

        numerics.pin_kernels = lambda: False  # this process only: torch's own sqrt
    out, args = argv[0], argv[1:]
    return trace(out, args or [*DEFAULT_RUN, "--results-root", tempfile.mkdtemp()])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
