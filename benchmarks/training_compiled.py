"""The compiled mode in the training chapter's loop: what compiling costs and what it saves per iteration.

    python benchmarks/training_compiled.py [--iterations 300]
    python benchmarks/training_compiled.py --device cuda     # on a GPU (benchmarks/gpu_check.sh)

Trains two copies of the chapter's model (``helpers.training.CubeMLP`` on the spiral, float64,
batches of 20 windows of 10 samples, ``odeint_adjoint`` dopri5 at rtol=1e-5, atol=1e-6, one CPU
thread; or on a GPU with ``--device cuda``) in lockstep on the same mini-batches: one eagerly, one
compiled (``compiled=True`` on the CPU, ``"reduce-overhead"``, CUDA graphs, on a GPU; ``--compiled``
chooses), taking turns to go first at each iteration. Reports the first iteration of each (the compiled one pays
the compilation), the median time of the later ones, the iterations after which compiling has
paid for itself, how many graphs were compiled after the first iteration (none is the goal), and
how closely the two loss histories agree. Last, a fresh process makes one compiled iteration with
the code that the first compilation left in inductor's on-disk cache: what a rerun pays.

Writes benchmarks/results/training_compiled_cpu.md and .json (``_cuda`` on a GPU; ``--out`` names
another stem), which the chapter "Training a Neural ODE with the adjoint" (book/07_training.ipynb)
reads.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

# an empty cache for torch.compile's generated code, so that the first iteration pays all of it
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="training-inductor-"))

import torch  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402

import helpers  # noqa: E402
from helpers.training import CubeMLP, make_spiral_data, sample_windows, training_step  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def setup(device):
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    return make_spiral_data(200, 5.0, device=device), CubeMLP().to(device)


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def device_name(device) -> str:
    """The GPU's or the processor's name (``platform.processor()`` is empty on Linux)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def first_iteration_seconds(device, mode):
    """One compiled training iteration in this process (run by main() in a fresh one)."""
    data, model = setup(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    z0, t, targets = sample_windows(data.t, data.z, 20, 10, torch.Generator().manual_seed(0))
    sync(device)
    start = time.perf_counter()
    training_step(model, optimizer, z0, t, targets, rtol=1e-5, atol=1e-6, compiled=mode)
    sync(device)
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--compiled", default="auto",
                        help="torch.compile mode of the compiled copy (auto: default on the CPU, "
                             "reduce-overhead on CUDA)")
    parser.add_argument("--out", default=None, help="results file stem (default training_compiled_<device>)")
    parser.add_argument("--first-iteration", action="store_true",
                        help="only time one compiled iteration and print its seconds (used internally)")
    args = parser.parse_args(argv)
    kind = torch.device(args.device).type
    mode = args.compiled if args.compiled != "auto" else ("reduce-overhead" if kind == "cuda" else "default")
    if args.first_iteration:
        print(json.dumps(dict(first_iteration_s=first_iteration_seconds(args.device, mode))))
        return

    data, model = setup(args.device)
    models = {"eager": model, "compiled": copy.deepcopy(model)}
    optimizers = {k: torch.optim.Adam(m.parameters(), lr=1e-2) for k, m in models.items()}
    compiled = {"eager": False, "compiled": mode}
    generator = torch.Generator().manual_seed(0)
    times = {k: [] for k in models}
    losses = {k: [] for k in models}
    nfe = {k: [] for k in models}
    graphs_after_first = None
    for i in range(args.iterations):
        z0, t, targets = sample_windows(data.t, data.z, 20, 10, generator)
        order = ("eager", "compiled") if i % 2 == 0 else ("compiled", "eager")
        for key in order:
            stats = helpers.SolveStats()
            sync(args.device)
            start = time.perf_counter()
            loss = training_step(models[key], optimizers[key], z0, t, targets, rtol=1e-5, atol=1e-6,
                                 stats=stats, compiled=compiled[key])
            sync(args.device)
            times[key].append(time.perf_counter() - start)
            losses[key].append(loss)
            nfe[key].append(stats.nfe_forward + stats.nfe_backward)
        if i == 0:
            graphs_after_first = counters["stats"]["unique_graphs"]
    new_graphs = counters["stats"]["unique_graphs"] - graphs_after_first

    # the same cache directory (inherited through the environment), now holding the compiled code
    rerun = subprocess.run([sys.executable, __file__, "--first-iteration", "--device", args.device,
                            "--compiled", mode], capture_output=True, text=True, check=True)
    warm_first_s = json.loads(rerun.stdout.strip().splitlines()[-1])["first_iteration_s"]

    eager_ms = 1e3 * statistics.median(times["eager"][1:])
    compiled_ms = 1e3 * statistics.median(times["compiled"][1:])
    ratios = [c / e for c, e in zip(times["compiled"][1:], times["eager"][1:])]
    first_compiled_s = times["compiled"][0]
    compile_s = first_compiled_s - times["eager"][0]  # what the first iteration cost beyond an eager one
    saving_ms = eager_ms - compiled_ms
    history_gap = max(abs(a - b) / abs(b) for a, b in zip(losses["compiled"], losses["eager"]))
    result = dict(
        device=device_name(args.device), compile_mode=mode, torch=torch.__version__, threads=1,
        iterations=args.iterations,
        eager_first_s=times["eager"][0], compiled_first_s=first_compiled_s, compile_s=compile_s,
        compiled_first_s_warm_cache=warm_first_s,
        eager_ms=eager_ms, compiled_ms=compiled_ms, ratio=statistics.median(ratios), saving_ms=saving_ms,
        break_even_iterations=(compile_s / (saving_ms / 1e3)) if saving_ms > 0 else None,
        graphs_compiled_after_first_iteration=new_graphs,
        nfe_per_iteration_median=dict(eager=statistics.median(nfe["eager"]),
                                      compiled=statistics.median(nfe["compiled"])),
        loss_history_max_rel_diff=history_gap,
    )
    break_even = "never" if result["break_even_iterations"] is None else f"{result['break_even_iterations']:.0f}"
    table = "\n".join([
        f"# The compiled mode in the training loop of chapter 7 ({kind.upper() if kind == 'cuda' else 'CPU'}, "
        "one thread, float64)",
        "",
        f"{args.iterations} iterations of each, in lockstep on the same mini-batches; torch {torch.__version__}; "
        f"{result['device']}; compiled mode {mode!r}.",
        "",
        "| | eager | compiled |",
        "|---|---|---|",
        f"| first iteration s | {result['eager_first_s']:.2f} | {first_compiled_s:.2f} |",
        f"| first iteration s, rerun with inductor's cache warm | - | {warm_first_s:.2f} |",
        f"| later iterations, median ms | {eager_ms:.2f} | {compiled_ms:.2f} |",
        f"| NFE per iteration (forward + backward), median | {result['nfe_per_iteration_median']['eager']:.0f} "
        f"| {result['nfe_per_iteration_median']['compiled']:.0f} |",
        "",
        f"Compiled / eager per iteration (median of the pairs): {result['ratio']:.2f}. Compilation cost "
        f"{compile_s:.1f} s; it pays for itself after {break_even} iterations. Graphs compiled after the "
        f"first iteration: {new_graphs}. Largest relative difference between the two loss histories: "
        f"{history_gap:.1e}.",
        "",
    ])
    print(table)
    RESULTS.mkdir(exist_ok=True)
    stem = args.out or f"training_compiled_{kind}"
    (RESULTS / f"{stem}.md").write_text(table)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
