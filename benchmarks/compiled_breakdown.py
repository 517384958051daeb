"""Where the compiled mode's time goes on problem S, beside XLA: f's parts, and the compilation.

    python benchmarks/compiled_breakdown.py          # CPU, one thread, a few minutes

Part 1, one evaluation of f inside a compiled loop. 100 classical RK4 steps (400 evaluations) of
dz/dt = f(z) on problem S (``helpers.models.MLP`` 2-64-2, batch 256, float32, seed 0) run as one
``torch.compile``d ``while_loop`` with helpers' own inductor options
(``helpers.steppers.compile_options``), and, when JAX is installed, as one ``jax.lax.fori_loop``
under ``jax.jit`` with the same weights. Three fields: the MLP as it is
(tanh(z W1ᵀ + b1) W2ᵀ + b2), its two matrix products without the tanh, and the tanh alone on a
(256, 64) tensor fed back through the loop; the MLP and the tanh each with helpers' rational
tanh (``helpers.rational_tanh``, the default) and with inductor's exponential form. Times are
the fastest of several rounds that take every variant of both libraries in turn, divided by 400. (JAX's own tanh is the same in both rows.)

Part 2, the first call of speed.py's two adjoint cases, compilation included, each in a fresh
process with an empty inductor cache (what a new Colab session pays): the whole call, the time
the C++ compiler ran (every g++ run is timed by a wrapper placed first on PATH) and the rest
(tracing, graph passes, code generation, the solve itself); beside diffrax's compile time for the
same case when it is installed.

Writes benchmarks/results/compiled_breakdown_cpu.md (and .json); the closing notes of the
performance issue quote it. It is a diagnosis, not a comparison the book asserts.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results"
STEPS = 100
H = 0.01


def _fields_torch(torch):
    def mlp(z, w1, b1, w2, b2):
        return torch.tanh(z @ w1.t() + b1) @ w2.t() + b2

    def products(z, w1, b1, w2, b2):
        return (z @ w1.t() + b1) @ w2.t() + b2

    return {"MLP": mlp, "matrix products only": products}


def _rk4_loop_torch(torch, field):
    from torch._higher_order_ops.while_loop import while_loop

    def solve(z, w1, b1, w2, b2, n):
        def more(i, z):
            return i < n

        def step(i, z):
            k1 = field(z, w1, b1, w2, b2)
            k2 = field(z + H / 2 * k1, w1, b1, w2, b2)
            k3 = field(z + H / 2 * k2, w1, b1, w2, b2)
            k4 = field(z + H * k3, w1, b1, w2, b2)
            return i + 1, z + H / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

        return while_loop(more, step, (torch.zeros((), dtype=torch.int64), z))[1]
    return solve


def _tanh_loop_torch(torch):
    from torch._higher_order_ops.while_loop import while_loop

    def solve(x, n):
        def more(i, x):
            return i < n

        def step(i, x):
            return i + 1, torch.tanh(x)

        return while_loop(more, step, (torch.zeros((), dtype=torch.int64), x))[1]
    return solve


def _interleaved(calls, repeats):
    """µs per evaluation of each call, the fastest of ``repeats`` rounds that take every call in
    turn: a slow spell of the machine lasts seconds, and back-to-back repeats would all fall in it."""
    for fn in calls.values():
        fn()  # compile
    best = {name: float("inf") for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: 1e6 * t / (4 * STEPS) for name, t in best.items()}


def part_one(repeats):
    """µs per evaluation of each field in a compiled loop, torch and (if present) JAX."""
    import torch

    from helpers.models import MLP
    from helpers.steppers import compile_options

    torch.manual_seed(0)
    mlp = MLP((2, 64, 2))
    z0 = torch.randn(256, 2)
    lin1, lin2 = [m for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
    weights = [p.detach() for p in (lin1.weight, lin1.bias, lin2.weight, lin2.bias)]
    n = torch.tensor(STEPS)
    n_tanh = torch.tensor(4 * STEPS)  # as many tanh calls as the MLP makes in the loop
    with_pass = compile_options("default")
    # the same options without helpers' rational tanh: inductor's exponential form
    without_pass = {k: v for k, v in with_pass.items() if k != "post_grad_custom_pre_pass"}
    fields = _fields_torch(torch)
    x = torch.randn(256, 64)
    calls = {}
    for label, options in (("rational tanh", with_pass), ("exp-form tanh", without_pass)):
        solve = torch.compile(_rk4_loop_torch(torch, fields["MLP"]), options=options, dynamic=False)
        tanh_loop = torch.compile(_tanh_loop_torch(torch), options=options, dynamic=False)
        calls[f"MLP, {label}"] = (lambda solve=solve: solve(z0, *weights, n))
        calls[f"tanh alone (256 × 64), {label}"] = (lambda tanh_loop=tanh_loop: tanh_loop(x, n_tanh))
    products = torch.compile(_rk4_loop_torch(torch, fields["matrix products only"]), options=with_pass,
                             dynamic=False)
    calls["matrix products only"] = lambda: products(z0, *weights, n)
    torch_names = list(calls)
    jax_rows = {}
    sys.path.insert(0, str(HERE))
    import diffrax_problem

    if diffrax_problem.available():
        import jax
        import jax.numpy as jnp

        params = [jnp.asarray(w.numpy()) for w in weights]
        zj = jnp.asarray(z0.numpy())

        def jax_fields():
            def mlp_j(z, w1, b1, w2, b2):
                return jnp.tanh(z @ w1.T + b1) @ w2.T + b2

            def products_j(z, w1, b1, w2, b2):
                return (z @ w1.T + b1) @ w2.T + b2
            return {"MLP": mlp_j, "matrix products only": products_j}

        jax_rows = {"jax MLP": ("MLP, rational tanh", "MLP, exp-form tanh"),
                    "jax matrix products only": ("matrix products only",),
                    "jax tanh": ("tanh alone (256 × 64), rational tanh", "tanh alone (256 × 64), exp-form tanh")}
        for name, field in jax_fields().items():
            def solve_j(z, w1, b1, w2, b2, field=field):
                def step(i, z):
                    k1 = field(z, w1, b1, w2, b2)
                    k2 = field(z + H / 2 * k1, w1, b1, w2, b2)
                    k3 = field(z + H / 2 * k2, w1, b1, w2, b2)
                    k4 = field(z + H * k3, w1, b1, w2, b2)
                    return z + H / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
                return jax.lax.fori_loop(0, STEPS, step, z)
            jitted = jax.jit(solve_j)
            calls[f"jax {name}"] = (lambda jitted=jitted: jitted(zj, *params).block_until_ready())
        xj = jnp.asarray(x.numpy())
        tanh_j = jax.jit(lambda x: jax.lax.fori_loop(0, 4 * STEPS, lambda i, x: jnp.tanh(x), x))
        calls["jax tanh"] = lambda: tanh_j(xj).block_until_ready()
    # every call of both libraries in turn, so that both see the machine in the same state
    us = _interleaved(calls, repeats)
    rows = {name: {"torch_us": us[name]} for name in torch_names}
    for jax_name, names in jax_rows.items():
        for name in names:
            rows[name]["jax_us"] = us[jax_name]
    return rows


GXX_WRAPPER = """#!/bin/sh
start=$(date +%s.%N)
{compiler} "$@"
status=$?
echo "$start $(date +%s.%N)" >> {log}
exit $status
"""


def first_call_child(case_index):
    """In a fresh process: the first call of one speed.py case; prints a JSON line."""
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(HERE))
    import speed
    from helpers.models import MLP

    torch.manual_seed(0)
    func = MLP((2, 64, 2))
    y0 = torch.randn(256, 2)
    name, adjoint, method, T, options = speed.CASES[case_index]
    start = time.perf_counter()
    speed.run_once(speed.helpers, func, y0, adjoint, method, T, options, compiled="default")
    print(json.dumps({"case": name, "first_call_s": time.perf_counter() - start}))


def part_two(cases):
    """The first call of each case in its own process, with its g++ time."""
    import shutil

    compiler = shutil.which("g++")
    if compiler is None:
        raise SystemExit("g++ is needed (inductor compiles C++ on the CPU)")
    rows = []
    for index in cases:
        with tempfile.TemporaryDirectory(prefix="breakdown-") as tmp:
            tmp = pathlib.Path(tmp)
            log = tmp / "gxx.log"
            shim = tmp / "bin"
            shim.mkdir()
            (shim / "g++").write_text(GXX_WRAPPER.format(compiler=compiler, log=log))
            (shim / "g++").chmod(0o755)
            env = dict(os.environ, PATH=f"{shim}{os.pathsep}{os.environ['PATH']}",
                       TORCHINDUCTOR_CACHE_DIR=str(tmp / "inductor"), CXX=str(shim / "g++"))
            out = subprocess.run([sys.executable, __file__, "--first-call", str(index)], env=env, check=True,
                                 capture_output=True, text=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            runs = [tuple(map(float, line.split())) for line in log.read_text().splitlines()] if log.exists() else []
            durations = sorted((end - start for start, end in runs), reverse=True)
            row.update(gxx_s=sum(durations), gxx_runs=len(durations), gxx_longest_s=durations[:3])
            rows.append(row)
    return rows


def diffrax_compile(cases):
    sys.path.insert(0, str(HERE))
    import diffrax_problem

    if not diffrax_problem.available():
        return {}
    import torch

    import speed
    from helpers.models import MLP

    torch.manual_seed(0)
    func = MLP((2, 64, 2))
    y0 = torch.randn(256, 2)
    seconds = {}
    for index in cases:
        name, adjoint, method, T, options = speed.CASES[index]
        step = (options or {}).get("step_size")
        case = diffrax_problem.make_case(func, y0, method, T, step_size=step,
                                         adjoint="backsolve" if adjoint else "recursive_checkpoint")
        seconds[name] = case.compile_seconds
    return seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--first-call", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE.parent))
    if args.first_call is not None:
        first_call_child(args.first_call)
        return
    import torch

    torch.set_num_threads(1)
    cases = (0, 1)  # speed.py's adjoint dopri5 and adjoint rk4
    started = time.perf_counter()
    evaluations = part_one(args.repeats)
    first_calls = part_two(cases)
    diffrax_s = diffrax_compile(cases)
    for row in first_calls:
        row["diffrax_compile_s"] = diffrax_s.get(row["case"])
    result = dict(device=platform.processor() or platform.machine(), torch=torch.__version__, threads=1,
                  date=time.strftime("%Y-%m-%d"), evaluations_us=evaluations, first_calls=first_calls,
                  seconds=time.perf_counter() - started)
    cpu = pathlib.Path("/proc/cpuinfo")
    if cpu.exists():
        for line in cpu.read_text().splitlines():
            if line.startswith("model name"):
                result["device"] = line.split(":", 1)[1].strip()
                break

    lines = [
        "# Where the compiled mode's time goes (problem S, CPU, one thread)",
        "",
        f"{result['device']}, torch {result['torch']}, {result['date']}. Run: `python benchmarks/compiled_breakdown.py`.",
        "",
        f"## One evaluation of f inside one compiled loop ({STEPS} RK4 steps, µs per evaluation, fastest of "
        f"{args.repeats} interleaved rounds)",
        "",
        "| field | torch compiled | JAX jit | torch / JAX |",
        "|---|---|---|---|",
    ]
    for name, row in evaluations.items():
        t, j = row["torch_us"], row.get("jax_us")
        jax_text = "-" if j is None else f"{j:.1f}"
        ratio_text = "-" if j is None else f"{t / j:.2f}"
        lines.append(f"| {name} | {t:.1f} | {jax_text} | {ratio_text} |")
    lines += [
        "",
        "## First call of the adjoint cases, fresh inductor cache, each in its own process",
        "",
        "| case | first call s | g++ s (runs) | longest g++ runs s | rest s | diffrax compile s |",
        "|---|---|---|---|---|---|",
    ]
    for row in first_calls:
        d = row["diffrax_compile_s"]
        longest = ", ".join(f"{s:.1f}" for s in row["gxx_longest_s"])
        diffrax_text = "-" if d is None else f"{d:.1f}"
        lines.append(f"| {row['case']} | {row['first_call_s']:.1f} | {row['gxx_s']:.1f} ({row['gxx_runs']}) | "
                     f"{longest} | {row['first_call_s'] - row['gxx_s']:.1f} | {diffrax_text} |")
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "compiled_breakdown_cpu.md").write_text(text)
    (RESULTS / "compiled_breakdown_cpu.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
