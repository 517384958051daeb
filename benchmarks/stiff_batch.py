"""One stiff sample in a batch (256 rows unless --batch): shared step size against per-sample step sizes.

    python benchmarks/stiff_batch.py             # CPU, one thread, about a minute
    python benchmarks/stiff_batch.py --batch 4096 --out stiff_batch_cpu_4096
                                                 # the same with 4096 rows, where f's cost grows
                                                 # with the rows (several minutes)

The problem: the tanh MLP 2-64-2 of benchmarks/speed.py (helpers.models.MLP, seed 0), batch 256,
float32, plus a per-row linear damping -k_i z carried in the state (rows [z1, z2, k_i], dk/dt = 0),
so the vector field treats rows independently. One row is stiff (k = K_STIFF), the others have
k = 0; the baseline batch has no stiff row. dopri5, rtol = atol = 1e-6, from t = 0 to T = 10
with outputs every 0.25 (see N_TIMES), loss mean(z(T)²).

For odeint_adjoint and for odeint (backpropagation through the solver), each of torchdiffeq
(shared step), helpers (shared step) and helpers with options={"per_sample_steps": True} runs
forward+backward, alternating (A B C C B A ...) so that drift in the machine's speed hits all
alike. Reported: median time, the median of the pairwise ratios against torchdiffeq and against
helpers' shared steps, NFE (calls of f) forward/backward, sample-evaluations (rows evaluated,
summed over calls, counted by wrapping f), accepted steps of the median and of the slowest sample (helpers), and the parameter gradients'
relative difference from torchdiffeq's at the same tolerance and from a float64 reference solved
at rtol = atol = 1e-10 (fairer: the step sequences differ, so only the tight reference tells
which is closer to the exact gradient; by backpropagation, or by the adjoint for more than 256
rows). The header also records what one call of f costs on one row and on the whole batch.

The table is printed and written to benchmarks/results/stiff_batch_cpu.md (and .json; --out
names another stem, as stiff_batch_cpu_4096), which the book's performance appendix reads.
"""
from __future__ import annotations

import argparse
import copy
import json
import pathlib
import platform
import statistics
import sys
import time
import timeit

import torch
from torch import nn

import helpers
from helpers.models import MLP

try:
    import torchdiffeq
except ImportError:  # pragma: no cover - torchdiffeq is a benchmark dependency
    sys.exit("torchdiffeq is needed for the comparison: pip install torchdiffeq")

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
BATCH = 256
T = 10.0
TOL = 1e-6
# chosen so that torchdiffeq's shared dopri5 needs about the 470 forward NFE the issue quotes
K_STIFF = 18.0
STIFF_ROW = 0
SOLVERS = ("torchdiffeq shared", "helpers shared", "helpers per-sample")
# Output times every 0.25: the loss reads only z(T), but the adjoint's backward solve re-anchors z
# to the stored forward state at every output time. Reconstructing z backward over one long
# interval amplifies its errors by exp(K_STIFF * length) on the stiff row: over all of [0, 10]
# that is exp(180), and the backward solve overflows (chapter "When the adjoint fails").
N_TIMES = 41


class Damped(nn.Module):
    """The MLP on z minus k z, on rows [z1, z2, k] with dk/dt = 0; counts calls and rows."""

    def __init__(self, mlp):
        super().__init__()
        self.mlp = mlp
        self.calls = 0
        self.rows = 0

    def forward(self, t, y):
        self.calls += 1
        self.rows += y.shape[0]
        z, k = y[:, :2], y[:, 2:]
        return torch.cat([self.mlp(t, z) - k * z, torch.zeros_like(k)], 1)


def make_batch(z0, stiff):
    k = torch.zeros(len(z0), 1, dtype=z0.dtype)
    if stiff:
        k[STIFF_ROW] = K_STIFF
    return torch.cat([z0, k], 1)


def run_once(solver, func, y0, adjoint, tol=TOL, stats=None):
    """One forward+backward; returns the parameter gradients and the counts of each pass."""
    t = torch.linspace(0.0, T, N_TIMES, dtype=y0.dtype)
    kwargs = dict(rtol=tol, atol=tol, method="dopri5")
    lib = torchdiffeq if solver.startswith("torchdiffeq") else helpers
    if solver == "helpers per-sample":
        kwargs["options"] = {"per_sample_steps": True}
    if lib is helpers and stats is not None:
        kwargs["stats"] = stats
    if adjoint:
        kwargs["adjoint_params"] = tuple(func.parameters())
    solve = lib.odeint_adjoint if adjoint else lib.odeint
    func.zero_grad(set_to_none=True)
    func.calls = func.rows = 0
    ys = solve(func, y0, t, **kwargs)
    forward = (func.calls, func.rows)
    loss = (ys[-1][:, :2] ** 2).mean()
    loss.backward()
    backward = (func.calls - forward[0], func.rows - forward[1])
    return [p.grad.detach().clone() for p in func.parameters()], forward, backward


def rel_diff(a, b):
    num = torch.sqrt(sum(((x.double() - y.double()) ** 2).sum() for x, y in zip(a, b)))
    den = torch.sqrt(sum((y.double() ** 2).sum() for y in b))
    return float(num / den)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="rounds of alternating runs per case")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=BATCH, help="rows in the batch (one of them stiff)")
    parser.add_argument("--hidden", type=int, default=64, help="hidden units of the MLP")
    parser.add_argument("--out", default="stiff_batch_cpu", help="results file stem")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    mlp = MLP((2, args.hidden, 2))
    z0 = torch.randn(args.batch, 2)
    func = Damped(mlp)
    reference_func = Damped(copy.deepcopy(mlp).double())
    # backpropagation through the reference's float64 steps keeps every activation: fine for 256
    # rows, tens of GB for 4096, where the reference is taken by the adjoint instead
    reference_adjoint = args.batch > BATCH
    started = time.perf_counter()

    rows = []
    for batch_name, stiff in (("one stiff row", True), ("baseline (no stiff row)", False)):
        y0 = make_batch(z0, stiff)
        # the fairer yardstick: float64, shared steps, rtol = atol = 1e-10, backpropagation
        reference, _, _ = run_once("helpers shared", reference_func, y0.double(), adjoint=reference_adjoint, tol=1e-10)
        for adjoint in (True, False):
            mode = "adjoint" if adjoint else "backprop"
            results = {}
            for solver in SOLVERS:  # warm-up, gradients and counts
                stats = helpers.SolveStats()
                grads, fwd, bwd = run_once(solver, func, y0, adjoint, stats=stats)
                results[solver] = dict(grads=grads, fwd=fwd, bwd=bwd, stats=stats, times=[])
            for i in range(args.repeats):
                order = SOLVERS if i % 2 == 0 else SOLVERS[::-1]  # A B C C B A
                for solver in order:
                    start = time.perf_counter()
                    run_once(solver, func, y0, adjoint)
                    results[solver]["times"].append(time.perf_counter() - start)
            base = results["torchdiffeq shared"]
            for solver in SOLVERS:
                r = results[solver]
                stats = r["stats"]
                if solver.startswith("helpers"):
                    # the wrapper's counts and the solver's own must agree
                    assert stats.nfe_forward == r["fwd"][0], (solver, stats.nfe_forward, r["fwd"])
                    if solver == "helpers per-sample":
                        assert stats.per_sample_steps, "SolveStats lacks the per-sample counts (see helpers/stats.py)"
                        assert stats.sample_evals_forward == r["fwd"][1]
                        if adjoint:
                            assert stats.sample_evals_backward == r["bwd"][1]
                        steps = (stats.sample_steps_median_forward, stats.sample_steps_slowest_forward,
                                 stats.sample_steps_median_backward, stats.sample_steps_slowest_backward)
                    else:
                        # a shared step: every sample takes the batch's steps
                        steps = (stats.steps_accepted_forward,) * 2 + (stats.steps_accepted_backward,) * 2
                else:
                    steps = None
                ratios = [a / b for a, b in zip(r["times"], base["times"])]
                # per-sample against shared steps, paired round by round like the ratios above
                shared = [a / b for a, b in zip(r["times"], results["helpers shared"]["times"])]
                rows.append(dict(
                    batch=batch_name, mode=mode, solver=solver,
                    ms=1e3 * statistics.median(r["times"]),
                    ratio_vs_torchdiffeq=statistics.median(ratios),
                    ratio_vs_shared=statistics.median(shared) if solver.startswith("helpers") else None,
                    nfe_forward=r["fwd"][0], nfe_backward=r["bwd"][0] if adjoint else None,
                    sample_evals_forward=r["fwd"][1], sample_evals_backward=r["bwd"][1] if adjoint else None,
                    steps_median_forward=None if steps is None else steps[0],
                    steps_slowest_forward=None if steps is None else steps[1],
                    steps_median_backward=None if steps is None or not adjoint else steps[2],
                    steps_slowest_backward=None if steps is None or not adjoint else steps[3],
                    grad_rel_diff_torchdiffeq=rel_diff(r["grads"], base["grads"]),
                    grad_rel_diff_reference=rel_diff(r["grads"], reference),
                ))
            print(f"done: {batch_name}, {mode}", file=sys.stderr)

    # what one call of f costs on one row and on the whole batch: per-sample steps save time only
    # where the second is much larger than the first
    f_us = {}
    for n in (1, args.batch):
        y = make_batch(z0[:n], False)
        t0 = torch.zeros(())
        f_us[n] = 1e6 * min(timeit.repeat(lambda: func(t0, y), number=50, repeat=5)) / 50
    header = dict(
        device=platform.processor() or "cpu", device_type="cpu", threads=args.threads, batch=args.batch, hidden=args.hidden,
        dtype="float32", method="dopri5", rtol=TOL, atol=TOL, T=T, n_times=N_TIMES, k_stiff=K_STIFF, repeats=args.repeats,
        torch=torch.__version__, torchdiffeq=getattr(torchdiffeq, "__version__", "?"),
        seconds=time.perf_counter() - started,
        reference="helpers.odeint_adjoint" if reference_adjoint else "helpers.odeint", f_us_one_row=f_us[1], f_us_batch=f_us[args.batch],
    )
    table = format_table(header, rows)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.md").write_text(table)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(dict(header=header, rows=rows), indent=1) + "\n")


def _fmt(x):
    return "-" if x is None else str(x)


def format_table(header, rows):
    lines = [
        f"# One stiff sample in a batch: shared against per-sample step sizes",
        "",
        f"MLP 2-{header['hidden']}-2 tanh plus a per-row damping -k z (k = {header['k_stiff']:g} on one row, 0 on the "
        f"others), batch {header['batch']}, {header['dtype']}, {header['method']} rtol = atol = {header['rtol']:g}, "
        f"T = {header['T']:g} (outputs every {header['T'] / (header['n_times'] - 1):g}), loss mean(z(T)^2). Device: {header['device']} ({header['device_type']}), threads "
        f"{header['threads']}, torch {header['torch']}, torchdiffeq {header['torchdiffeq']}; {header['repeats']} "
        f"rounds of alternating runs. One call of f: {header['f_us_one_row']:.0f} µs on one row, "
        f"{header['f_us_batch']:.0f} µs on all {header['batch']}.",
        "",
        "| batch | gradient | solver | ms fwd+bwd | ratio vs torchdiffeq | ratio vs helpers shared | NFE fwd/bwd "
        "| sample-evals fwd/bwd "
        "| steps median sample fwd/bwd | steps slowest sample fwd/bwd | grad rel. diff vs torchdiffeq "
        "| grad rel. diff vs reference |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['mode']} | {r['solver']} | {r['ms']:.1f} | {r['ratio_vs_torchdiffeq']:.2f} | "
            f"{'-' if r['ratio_vs_shared'] is None else format(r['ratio_vs_shared'], '.2f')} | "
            f"{r['nfe_forward']}/{_fmt(r['nfe_backward'])} | "
            f"{r['sample_evals_forward']}/{_fmt(r['sample_evals_backward'])} | "
            f"{_fmt(r['steps_median_forward'])}/{_fmt(r['steps_median_backward'])} | "
            f"{_fmt(r['steps_slowest_forward'])}/{_fmt(r['steps_slowest_backward'])} | "
            f"{r['grad_rel_diff_torchdiffeq']:.1e} | {r['grad_rel_diff_reference']:.1e} |"
        )
    lines.append("")
    lines.append(
        "NFE counts calls of f (each on the rows still being integrated); sample-evaluations count the rows "
        "those calls evaluated. Steps are accepted steps (shared solvers: every sample takes the batch's steps; "
        f"torchdiffeq does not report them). The reference is {header.get('reference', 'helpers.odeint')} in float64 at rtol = atol = 1e-10 "
        f"with shared steps. Whole run: {header['seconds']:.0f} s."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
