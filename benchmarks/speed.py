"""helpers against torchdiffeq, side by side in one process: time, NFE, lower bound, memory, gradients.

    python benchmarks/speed.py                 # problem S on the CPU, one thread
    python benchmarks/speed.py --problem L     # problem L (hidden 512, batch 4096), on CUDA if present

Each case is timed for helpers (eager), torchdiffeq, helpers' compiled mode (``compiled=``; its
first call, compilation included, is reported separately, cold (an empty inductor cache) and warm
(in-memory caches dropped, inductor's on-disk cache kept, as after a kernel restart)) and, on the
CPU when JAX and diffrax are installed (``pip install -r benchmarks/requirements-diffrax.txt``,
optional), diffrax on the identical problem (weights copied from the PyTorch model; see
diffrax_problem.py): its ``BacksolveAdjoint`` beside the adjoint cases, its default
``RecursiveCheckpointAdjoint`` beside the backprop ones.

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
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

# A fresh, empty cache for torch.compile's generated code, so that the reported first call pays
# the whole compilation (inductor otherwise reuses kernels that earlier runs left on disk)
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="speed-inductor-"))

import torch  # noqa: E402  (after the cache directory is chosen)

import helpers  # noqa: E402
from helpers.models import MLP  # noqa: E402
from helpers.steppers import CHAIN_LENGTH  # noqa: E402

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
    ("backprop rk4 h=0.01 T=1", False, "rk4", 1.0, dict(step_size=0.01)),
]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_once(lib, func, y0, adjoint, method, T, options, **extra):
    """One forward+backward; returns the parameter gradients. ``extra``: e.g. ``compiled=True``."""
    t = torch.tensor([0.0, T], device=y0.device)
    kwargs = dict(rtol=1e-6, atol=1e-6, method=method, options=options, **extra)
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


def compiled_costs(func, y0, mode, repeats):
    """Where a compiled step's time goes: median seconds of one call of a trivial compiled function
    (the fixed cost of entering compiled code), of one rk4 step (four evaluations of f) compiled,
    and of the same step eager."""
    from helpers.steppers import EagerStepper, compile_options, compiled_stepper
    from helpers.tableaus import RK4

    t = torch.tensor(0.0, device=y0.device)
    h = torch.tensor(0.01, device=y0.device)
    trivial = torch.compile(lambda y: y + 1, options=compile_options(mode, y0.device.type), dynamic=False)
    compiled_step = compiled_stepper(func, RK4, 1e-6, 1e-6, mode, device_type=y0.device.type)
    eager_step = EagerStepper(func, RK4, 1e-6, 1e-6)
    costs = []
    with torch.no_grad():
        for fn in (lambda: trivial(y0), lambda: compiled_step(t, y0, h), lambda: eager_step(t, y0, h)):
            for _ in range(5):
                fn()
            costs.append(statistics.median(timed(fn, y0.device)[0] for _ in range(repeats)))
    return costs


def rel_diff(a, b):
    num = torch.sqrt(sum(((x - y).double() ** 2).sum() for x, y in zip(a, b)))
    den = torch.sqrt(sum((y.double() ** 2).sum() for y in b))
    return float(num / den)


def make_runners(func, y0, adjoint, method, T, options, compile_mode, diffrax_module):
    """The libraries to time on one case.

    **Returns:** ``{name: (first-call seconds or None, run, [diffrax case])}``, ``run()`` giving the
    parameter gradients. The compiled mode's first call (compilation included) is made and timed
    here; diffrax's ``make_case`` compiles and times its own.
    """
    step_size = None if options is None else options.get("step_size")
    runners = {}

    def add(name, fn, setup_seconds=None):
        runners[name] = (setup_seconds, fn)

    add("helpers", lambda: run_once(helpers, func, y0, adjoint, method, T, options))
    add("torchdiffeq", lambda: run_once(torchdiffeq, func, y0, adjoint, method, T, options))
    if compile_mode is not None:
        def compiled():
            return run_once(helpers, func, y0, adjoint, method, T, options, compiled=compile_mode)
        seconds, _ = timed(compiled, y0.device)  # the first call compiles the step (forward and backward)
        add("helpers compiled", compiled, seconds)
        # again after dropping what this process holds in memory: inductor's cache on disk is
        # warm, as for a reader who restarts the kernel (a new Colab session starts cold)
        from helpers import steppers
        torch._dynamo.reset()
        steppers._CACHE.clear()
        runners["helpers compiled warm"] = (timed(compiled, y0.device)[0], None)
    if diffrax_module is not None:
        case = diffrax_module.make_case(func, y0, method, T, rtol=1e-6, atol=1e-6, step_size=step_size,
                                        adjoint="backsolve" if adjoint else "recursive_checkpoint")

        def diffrax_run():
            _, grads = case.run()
            return [torch.from_numpy(g.copy()) for g in grads]
        runners["diffrax"] = (case.compile_seconds, diffrax_run, case)
    return runners


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", choices=sorted(PROBLEMS), default="S")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda for L if present, else cpu)")
    parser.add_argument("--repeats", type=int, default=10, help="rounds of alternating runs per case")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compiled", default="auto",
                        help="torch.compile mode for the 'helpers compiled' rows: default, reduce-overhead, ..., "
                             "or 'none' (auto: default on the CPU, reduce-overhead on CUDA)")
    parser.add_argument("--no-diffrax", action="store_true", help="leave diffrax out even if it is installed")
    parser.add_argument("--no-whole-solves", action="store_true",
                        help="compiled mode without its whole-solve loops (a compiled call per step, or per "
                             "CHAIN_LENGTH steps), to compare with them")
    parser.add_argument("--out", default=None, help="results file stem (default speed_<problem>_<device>)")
    args = parser.parse_args(argv)

    if args.no_whole_solves:
        from helpers import steppers
        steppers._while_loop = lambda: None  # as where torch has no while_loop
    device = torch.device(args.device or ("cuda" if args.problem == "L" and torch.cuda.is_available() else "cpu"))
    torch.set_num_threads(args.threads)
    compile_mode = {"auto": "reduce-overhead" if device.type == "cuda" else "default", "none": None}.get(
        args.compiled, args.compiled)
    diffrax_module = None
    if device.type == "cpu" and not args.no_diffrax:
        import diffrax_problem  # sets XLA to one thread before JAX starts; imports without JAX
        diffrax_module = diffrax_problem if diffrax_problem.available() else None
    torch.manual_seed(0)
    size = PROBLEMS[args.problem]
    func = MLP((2, size["hidden"], 2), device=device)
    y0 = torch.randn(size["batch"], 2, device=device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"

    f_cost, vjp_cost = unit_costs(func, y0, repeats=50)
    step_costs = (None,) * 3 if compile_mode is None else compiled_costs(func, y0, compile_mode, 200)
    rows = []
    for name, adjoint, method, T, options in CASES:
        runners = make_runners(func, y0, adjoint, method, T, options, compile_mode, diffrax_module)
        names = [k for k, v in runners.items() if v[1] is not None]  # the timed ones
        for key in names:  # warm-up, and the gradients to compare
            runners[key][1]()
        times = {k: [] for k in names}
        grads = {}
        for i in range(args.repeats):
            order = names if i % 2 == 0 else names[::-1]  # A B C C B A ...
            for key in order:
                dt, grads[key] = timed(runners[key][1], device)
                times[key].append(dt)
        # NFE: helpers reports them; torchdiffeq's are counted by wrapping f
        stats = helpers.SolveStats()
        t = torch.tensor([0.0, T], device=device)
        kw = dict(rtol=1e-6, atol=1e-6, method=method, options=options)
        solve = helpers.odeint_adjoint if adjoint else helpers.odeint
        ys = solve(func, y0, t, stats=stats, **kw)
        (ys[-1] ** 2).mean().backward()
        tdq_nfe = count_torchdiffeq_nfe(func, y0, adjoint, method, T, options)

        def ratio(a, b):
            return statistics.median(x / y for x, y in zip(times[a], times[b]))

        def median_ms(key):
            return 1e3 * statistics.median(times[key]) if key in times else None

        nfe_b = stats.nfe_backward if adjoint else stats.nfe_forward  # backprop: one VJP per recorded evaluation
        bound = stats.nfe_forward * f_cost + nfe_b * (vjp_cost - f_cost if not adjoint else vjp_cost)
        mem = {k: peak_memory(lambda lib=lib: run_once(lib, func, y0, adjoint, method, T, options), device)
               for k, lib in (("helpers", helpers), ("torchdiffeq", torchdiffeq))}
        row = dict(
            case=name,
            helpers_ms=median_ms("helpers"),
            torchdiffeq_ms=median_ms("torchdiffeq"),
            ratio=ratio("helpers", "torchdiffeq"),
            nfe_helpers=f"{stats.nfe_forward}/{stats.nfe_backward if adjoint else '-'}",
            nfe_torchdiffeq=f"{tdq_nfe[0]}/{tdq_nfe[1] if adjoint else '-'}",
            lower_bound_ms=1e3 * bound,
            helpers_over_bound=statistics.median(times["helpers"]) / bound,
            torchdiffeq_over_bound=statistics.median(times["torchdiffeq"]) / bound,
            peak_mib_helpers=None if mem["helpers"] is None else mem["helpers"] / 2**20,
            peak_mib_torchdiffeq=None if mem["torchdiffeq"] is None else mem["torchdiffeq"] / 2**20,
            grad_rel_diff=rel_diff(grads["helpers"], grads["torchdiffeq"]),
            compiled_mode=compile_mode,
            compiled_ms=median_ms("helpers compiled"),
            compiled_first_call_s=runners["helpers compiled"][0] if "helpers compiled" in runners else None,
            compiled_first_call_warm_s=(runners["helpers compiled warm"][0]
                                        if "helpers compiled warm" in runners else None),
            compiled_over_eager=ratio("helpers compiled", "helpers") if "helpers compiled" in runners else None,
            compiled_over_torchdiffeq=(ratio("helpers compiled", "torchdiffeq")
                                       if "helpers compiled" in runners else None),
            compiled_grad_rel_diff_eager=(rel_diff(grads["helpers compiled"], grads["helpers"])
                                          if "helpers compiled" in runners else None),
            diffrax_ms=median_ms("diffrax"),
            diffrax_compile_s=runners["diffrax"][0] if "diffrax" in runners else None,
            diffrax_nfe=("{}/{}".format(*runners["diffrax"][2].nfe()) if "diffrax" in runners else None),
            compiled_over_diffrax=(ratio("helpers compiled", "diffrax")
                                   if "diffrax" in runners and "helpers compiled" in runners else None),
            eager_over_diffrax=ratio("helpers", "diffrax") if "diffrax" in runners else None,
            diffrax_grad_rel_diff=(rel_diff(grads["helpers compiled" if "helpers compiled" in runners else "helpers"],
                                            grads["diffrax"]) if "diffrax" in runners else None),
        )
        rows.append(row)
        print(f"done: {name}", file=sys.stderr)

    header = dict(
        problem=args.problem, device=device_name, device_type=device.type, threads=args.threads,
        hidden=size["hidden"], batch=size["batch"], dtype="float32", repeats=args.repeats,
        torch=torch.__version__, torchdiffeq=getattr(torchdiffeq, "__version__", "?"),
        f_cost_us=1e6 * f_cost, f_vjp_cost_us=1e6 * vjp_cost,
        compiled_mode=compile_mode,
        # a trivial compiled call; one rk4 step (4 evaluations of f) compiled, and eager
        compiled_call_us=None if step_costs[0] is None else 1e6 * step_costs[0],
        compiled_rk4_step_us=None if step_costs[1] is None else 1e6 * step_costs[1],
        eager_rk4_step_us=None if step_costs[2] is None else 1e6 * step_costs[2],
        chain_length=CHAIN_LENGTH,  # fixed-step solvers: steps per compiled call
        whole_solves=not args.no_whole_solves,  # the adjoint's solves as one compiled while_loop each
        diffrax=None if diffrax_module is None else diffrax_module.versions(),
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
        f"torchdiffeq {header['torchdiffeq']}; {header['repeats']} alternating rounds per case. "
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
    if header.get("compiled_mode"):
        lines += compiled_table(header, rows)
    return "\n".join(lines) + "\n"


def compiled_table(header, rows):
    """The compiled mode's rows, beside helpers eager and, when installed, diffrax."""
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    diffrax = header.get("diffrax")
    lines = [
        "",
        f"## Compiled mode (compiled={header['compiled_mode']!r})"
        + (f" and diffrax (jax {diffrax['jax']}, diffrax {diffrax['diffrax']}, one XLA thread)" if diffrax else ""),
        "",
        "Times are medians over the same alternating rounds as above; ratios are medians of the per-round ratios. "
        "First call = the first forward+backward with these shapes, compilation included. "
        f"Profile: entering any compiled function costs {header['compiled_call_us']:.1f} µs (a trivial one, "
        f"timed); one rk4 step (4 evaluations of f, no gradient) takes {header['compiled_rk4_step_us']:.1f} µs "
        f"compiled and {header['eager_rk4_step_us']:.1f} µs eager. Fixed-step solvers (rk4 here) take "
        f"{header['chain_length']} steps per compiled call where the steps are differentiated (backprop), "
        "and on the CPU each interval between requested times in one call where they are not (both solves "
        "of the adjoint); adaptive ones take one step per call. First call warm: the same after dropping "
        "the in-memory caches, inductor's on-disk cache kept (a kernel restart).",
        "",
        "| case | helpers eager ms | helpers compiled ms | compiled / eager | compiled / torchdiffeq | diffrax ms "
        "| compiled / diffrax | eager / diffrax | first call s, compiled | first call s, warm | compile s, diffrax "
        "| NFE fwd/bwd diffrax "
        "| gradient rel. diff compiled vs eager | gradient rel. diff vs diffrax |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['helpers_ms']:.2f} | {fmt(r['compiled_ms'], '.2f')} | "
            f"{fmt(r['compiled_over_eager'], '.2f')} | {fmt(r['compiled_over_torchdiffeq'], '.2f')} | "
            f"{fmt(r['diffrax_ms'], '.2f')} | {fmt(r['compiled_over_diffrax'], '.2f')} | "
            f"{fmt(r['eager_over_diffrax'], '.2f')} | {fmt(r['compiled_first_call_s'], '.1f')} | "
            f"{fmt(r.get('compiled_first_call_warm_s'), '.1f')} | {fmt(r['diffrax_compile_s'], '.1f')} | {r['diffrax_nfe'] or '-'} | "
            f"{fmt(r['compiled_grad_rel_diff_eager'], '.1e')} | {fmt(r['diffrax_grad_rel_diff'], '.1e')} |"
        )
    if diffrax:
        lines += ["", "diffrax: BacksolveAdjoint (the continuous adjoint) in the adjoint cases, its default "
                  "RecursiveCheckpointAdjoint (backpropagation through its steps, recomputed from checkpoints) in "
                  "the backprop ones; its gradients are compared with the compiled mode's."]
    return lines


if __name__ == "__main__":
    main()
