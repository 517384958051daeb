"""Peak memory against the number of steps: backprop through the solver against the adjoint.

    python benchmarks/memory.py

Problem S (MLP 2-64-2 tanh, batch 256, float32), rk4 with N steps over T = N × 0.01, loss
mean(z(T)^2), one forward and backward pass. Each measurement runs in a fresh Python process and
reports the growth of its peak resident set size (ru_maxrss) over the size it had just before the
solve, so torch's own footprint and allocator caches from other runs do not blur it. The adjoint
is also run with checkpoints, whose stored states are the memory they cost.

Writes benchmarks/results/memory_cpu.md and .json.
"""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
STEPS = (250, 500, 1000, 2000, 4000)
CHECKPOINTS = (0, 16, 64, 256)

CHILD = r"""
import resource, sys, torch, helpers
from helpers.models import MLP
torch.set_num_threads(1)
torch.manual_seed(0)
mode, steps, checkpoints = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
func = MLP((2, 64, 2))
y0 = torch.randn(256, 2)
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
def run(n):
    t = torch.tensor([0.0, 0.01 * n])
    opts = dict(step_size=0.01)
    if mode == "adjoint":
        ys = helpers.odeint_adjoint(func, y0, t, method="rk4", options=opts,
                                    adjoint_options=dict(step_size=0.01, checkpoints=checkpoints))
    else:
        ys = helpers.odeint(func, y0, t, method="rk4", options=opts)
    (ys[-1] ** 2).mean().backward()
run(2)  # warm-up: first-call allocations are not the solver's
before = rss()
peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
run(steps)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(max(peak, peak_before) - before)
"""


def measure(mode: str, steps: int, checkpoints: int = 0) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(steps), str(checkpoints)],
                         check=True, capture_output=True, text=True)
    return int(out.stdout.strip().splitlines()[-1])


def main():
    rows = []
    for n in STEPS:
        row = dict(steps=n, backprop_mib=measure("backprop", n) / 2**20, adjoint_mib=measure("adjoint", n) / 2**20)
        rows.append(row)
        print(f"steps {n}: backprop {row['backprop_mib']:.1f} MiB, adjoint {row['adjoint_mib']:.1f} MiB", file=sys.stderr)
    ckpt_rows = [dict(checkpoints=k, adjoint_mib=measure("adjoint", STEPS[-1], k) / 2**20) for k in CHECKPOINTS]
    lines = [
        "# Memory: extra peak RSS of one forward+backward pass (problem S, rk4, h = 0.01, CPU, fresh process each)",
        "",
        "| rk4 steps | backprop (helpers.odeint) MiB | adjoint (helpers.odeint_adjoint) MiB |",
        "|---|---|---|",
    ]
    lines += [f"| {r['steps']} | {r['backprop_mib']:.1f} | {r['adjoint_mib']:.1f} |" for r in rows]
    lines += [
        "",
        f"Checkpointed adjoint at {STEPS[-1]} steps (each checkpoint stores one 256×2 float32 state, 2 KiB):",
        "",
        "| checkpoints | adjoint MiB |",
        "|---|---|",
    ]
    lines += [f"| {r['checkpoints']} | {r['adjoint_mib']:.1f} |" for r in ckpt_rows]
    table = "\n".join(lines) + "\n"
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "memory_cpu.md").write_text(table)
    (RESULTS / "memory_cpu.json").write_text(json.dumps(dict(steps=rows, checkpoints=ckpt_rows), indent=1) + "\n")


if __name__ == "__main__":
    main()
