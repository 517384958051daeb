"""helpers against torchdiffeq, side by side in one process: time, NFE, lower bound, memory, gradients.

    python benchmarks/speed.py                 # problem S on the CPU, one thread
    python benchmarks/speed.py --problem L     # problem L (hidden 512, batch 4096), on CUDA if present

Runs alternate A B B A ... so that drift in the machine's speed hits both libraries alike. Each row
reports the median forward+backward time of each library, the median of the pairwise ratios
helpers/torchdiffeq, the NFE of each, the lower bound NFE × (measured cost of one evaluation of f,
forward; of one evaluation plus its vector–Jacobian product, backward), the peak memory of one
run and the relative difference between the two libraries' parameter gradients.

The table is printed and written to benchmarks/results/speed_<problem>_<device>.md (and .json),
which the book's performance appendix reads.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import sys
import time

import torch

import helpers
from helpers.models import MLP

try:
    import torchdiffeq
except ImportError:  # pragma: no cover - torchdiffeq is a benchmark dependency
    sys.exit("torchdiffeq is needed for the comparison: pip install torchdiffeq")

RESULTS = pathlib.Path(__file__).resolve().parent / "results"

PROBLEMS = {
    "S": dict(hidden=64, batch=256),
    "L": dict(hidden=512, batch=4096),
}

CASES = [
    # name, adjoint?, method, T, options
    ("adjoint dopri5 T=10", True, "dopri5", 10.0, None),
    ("adjoint rk4 h=0.01 T=1", True, "rk4", 1.0, dict(step_size=0.01)),
    ("backprop dopri5 T=10", False, "dopri5", 10.0, None),
]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_once(lib, func, y0, adjoint, method, T, options):
    """One forward+backward; returns the parameter gradients."""
    t = torch.tensor([0.0, T], device=y0.device)
    kwargs = dict(rtol=1e-6, atol=1e-6, method=method, options=options)
    if adjoint:
        kwargs["adjoint_params"] = tuple(func.parameters())
        solve = lib.odeint_adjoint
    else:
        solve = lib.odeint
    func.zero_grad(set_to_none=True)
    ys = solve(func, y0, t, **kwargs)
    loss = (ys[-1] ** 2).mean()
    loss.backward()
    return [p.grad.detach().clone() for p in func.parameters()]


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def peak_memory(fn, device):
    """Peak memory of one run: CUDA allocator peak above the start, or None on the CPU (see memory.py)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def unit_costs(func, y0, repeats):
    """Median seconds of one evaluation of f (no graph) and of one evaluation plus its VJP."""
    t = torch.tensor(0.0, device=y0.device)
    params = tuple(func.parameters())
    lam = torch.randn_like(y0)

    def f_only():
        with torch.no_grad():
            return func(t, y0)

    def f_vjp():
        z = y0.detach().requires_grad_(True)
        with torch.enable_grad():
            out = func(t, z)
            return torch.autograd.grad(out, (z,) + params, grad_outputs=lam)

    costs = []
    for fn in (f_only, f_vjp):
        for _ in range(5):
            fn()
        times = [timed(fn, y0.device)[0] for _ in range(repeats)]
        costs.append(statistics.median(times))
    return costs


def rel_diff(a, b):
    num = torch.sqrt(sum(((x - y).double() ** 2).sum() for x, y in zip(a, b)))
    den = torch.sqrt(sum((y.double() ** 2).sum() for y in b))
    return float(num / den)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", choices=sorted(PROBLEMS), default="S")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda for L if present, else cpu)")
    parser.add_argument("--repeats", type=int, default=10, help="pairs of runs per case")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="results file stem (default speed_<problem>_<device>)")
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if args.problem == "L" and torch.cuda.is_available() else "cpu"))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = PROBLEMS[args.problem]
    func = MLP((2, size["hidden"], 2), device=device)
    y0 = torch.randn(size["batch"], 2, device=device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"

    f_cost, vjp_cost = unit_costs(func, y0, repeats=50)
    rows = []
    for name, adjoint, method, T, options in CASES:
        libs = {"helpers": helpers, "torchdiffeq": torchdiffeq}
        times = {k: [] for k in libs}
        for lib in libs.values():  # warm-up, and the gradients to compare
            run_once(lib, func, y0, adjoint, method, T, options)
        stats = helpers.SolveStats()
        grads = {}
        for i in range(args.repeats):
            order = ("helpers", "torchdiffeq") if i % 2 == 0 else ("torchdiffeq", "helpers")  # A B B A
            for key in order:
                if key == "helpers":
                    def fn():
                        return run_once(helpers, func, y0, adjoint, method, T, options)
                else:
                    def fn():
                        return run_once(torchdiffeq, func, y0, adjoint, method, T, options)
                dt, grads[key] = timed(fn, device)
                times[key].append(dt)
        # NFE: helpers reports them; torchdiffeq's are counted by wrapping f
        stats = helpers.SolveStats()
        t = torch.tensor([0.0, T], device=device)
        kw = dict(rtol=1e-6, atol=1e-6, method=method, options=options)
        solve = helpers.odeint_adjoint if adjoint else helpers.odeint
        ys = solve(func, y0, t, stats=stats, **kw)
        (ys[-1] ** 2).mean().backward()
        tdq_nfe = count_torchdiffeq_nfe(func, y0, adjoint, method, T, options)
        ratios = [a / b for a, b in zip(times["helpers"], times["torchdiffeq"])]
        nfe_b = stats.nfe_backward if adjoint else stats.nfe_forward  # backprop: one VJP per recorded evaluation
        bound = stats.nfe_forward * f_cost + nfe_b * (vjp_cost - f_cost if not adjoint else vjp_cost)
        mem = {k: peak_memory(lambda lib=lib: run_once(lib, func, y0, adjoint, method, T, options), device)
               for k, lib in libs.items()}
        rows.append(dict(
            case=name,
            helpers_ms=1e3 * statistics.median(times["helpers"]),
            torchdiffeq_ms=1e3 * statistics.median(times["torchdiffeq"]),
            ratio=statistics.median(ratios),
            nfe_helpers=f"{stats.nfe_forward}/{stats.nfe_backward if adjoint else '-'}",
            nfe_torchdiffeq=f"{tdq_nfe[0]}/{tdq_nfe[1] if adjoint else '-'}",
            lower_bound_ms=1e3 * bound,
            helpers_over_bound=statistics.median(times["helpers"]) / bound,
            torchdiffeq_over_bound=statistics.median(times["torchdiffeq"]) / bound,
            peak_mib_helpers=None if mem["helpers"] is None else mem["helpers"] / 2**20,
            peak_mib_torchdiffeq=None if mem["torchdiffeq"] is None else mem["torchdiffeq"] / 2**20,
            grad_rel_diff=rel_diff(grads["helpers"], grads["torchdiffeq"]),
        ))
        print(f"done: {name}", file=sys.stderr)

    header = dict(
        problem=args.problem, device=device_name, device_type=device.type, threads=args.threads,
        hidden=size["hidden"], batch=size["batch"], dtype="float32", repeats=args.repeats,
        torch=torch.__version__, torchdiffeq=getattr(torchdiffeq, "__version__", "?"),
        f_cost_us=1e6 * f_cost, f_vjp_cost_us=1e6 * vjp_cost,
    )
    table = format_table(header, rows)
    print(table)
    stem = args.out or f"speed_{args.problem}_{device.type}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.md").write_text(table)
    (RESULTS / f"{stem}.json").write_text(json.dumps(dict(header=header, rows=rows), indent=1) + "\n")


def count_torchdiffeq_nfe(func, y0, adjoint, method, T, options):
    counts = {"n": 0}

    class Counted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = func

        def forward(self, t, y):
            counts["n"] += 1
            return self.inner(t, y)

    counted = Counted()
    t = torch.tensor([0.0, T], device=y0.device)
    kw = dict(rtol=1e-6, atol=1e-6, method=method, options=options)
    if adjoint:
        ys = torchdiffeq.odeint_adjoint(counted, y0, t, adjoint_params=tuple(func.parameters()), **kw)
    else:
        ys = torchdiffeq.odeint(counted, y0, t, **kw)
    forward = counts["n"]
    (ys[-1] ** 2).mean().backward()
    func.zero_grad(set_to_none=True)
    return forward, counts["n"] - forward


def format_table(header, rows):
    lines = [
        f"# Speed: problem {header['problem']} (MLP 2-{header['hidden']}-2 tanh, batch {header['batch']}, "
        f"{header['dtype']}, loss mean(z(T)^2))",
        "",
        f"Device: {header['device']} ({header['device_type']}), threads {header['threads']}, torch {header['torch']}, "
        f"torchdiffeq {header['torchdiffeq']}; {header['repeats']} alternating pairs per case. "
        f"One evaluation of f: {header['f_cost_us']:.1f} µs; f plus its VJP: {header['f_vjp_cost_us']:.1f} µs.",
        "",
        "| case | helpers ms | torchdiffeq ms | ratio (median of pairs) | NFE fwd/bwd helpers | NFE fwd/bwd torchdiffeq "
        "| lower bound ms | helpers / bound | torchdiffeq / bound | peak MiB helpers | peak MiB torchdiffeq "
        "| gradient rel. diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mem_h = "-" if r["peak_mib_helpers"] is None else f"{r['peak_mib_helpers']:.1f}"
        mem_t = "-" if r["peak_mib_torchdiffeq"] is None else f"{r['peak_mib_torchdiffeq']:.1f}"
        lines.append(
            f"| {r['case']} | {r['helpers_ms']:.2f} | {r['torchdiffeq_ms']:.2f} | {r['ratio']:.2f} | "
            f"{r['nfe_helpers']} | {r['nfe_torchdiffeq']} | {r['lower_bound_ms']:.2f} | "
            f"{r['helpers_over_bound']:.2f} | {r['torchdiffeq_over_bound']:.2f} | {mem_h} | {mem_t} | "
            f"{r['grad_rel_diff']:.1e} |"
        )
    lines.append("")
    lines.append("Peak memory on the CPU is measured per process by benchmarks/memory.py (peak RSS); "
                 "lower bound = NFE × measured cost per evaluation (backward: evaluation + VJP).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
