"""Run torchdiffeq's examples with ``import torchdiffeq`` resolving to helpers, beside torchdiffeq.

    python benchmarks/torchdiffeq_examples.py PATH/TO/torchdiffeq/examples [--niters N]

For each example (``ode_demo.py`` with and without ``--adjoint``, and a tuple-state example:
torchdiffeq's ``cnf.py`` when scikit-learn, Pillow and matplotlib are installed, else
``benchmarks/tuple_state_example.py``, a small flow on the tuple ``(z, logp)``), it runs the
script unchanged twice, once with a temporary ``torchdiffeq`` package that re-exports helpers'
API first on ``sys.path`` and once with torchdiffeq itself, both seeded alike (NumPy and torch
seed 0), and prints whether each ran, its final loss and its time. The losses are not expected
to be equal: the two libraries take different adaptive steps, so training drifts apart.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent

SHIM = '''\
"""torchdiffeq's names, answered by helpers (made by benchmarks/torchdiffeq_examples.py)."""
import helpers
from helpers import odeint, odeint_adjoint
odeint_event = getattr(helpers, "odeint_event", None)
__version__ = "helpers"
'''

# seed NumPy and torch, then run the script as __main__ with its own arguments
LAUNCH = ("import runpy, sys, numpy, torch; numpy.random.seed(0); torch.manual_seed(0); "
          "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")

LOSS = re.compile(r"(?:Total Loss|Loss|running avg loss:)\s*([-+0-9.eE]+)")


def examples(folder: pathlib.Path, niters: int):
    """(name, script, arguments) of each example to run."""
    short = ["--niters", str(niters), "--test_freq", str(max(1, niters // 3))]
    runs = [("ode_demo", folder / "ode_demo.py", short),
            ("ode_demo --adjoint", folder / "ode_demo.py", short + ["--adjoint"])]
    if all(importlib.util.find_spec(m) for m in ("sklearn", "PIL", "matplotlib")):
        cnf = ["--niters", str(niters), "--num_samples", "64", "--width", "16", "--hidden_dim", "8"]
        runs.append(("cnf --adjoint (tuple state)", folder / "cnf.py", cnf + ["--adjoint"]))
    else:
        own = HERE / "tuple_state_example.py"
        runs.append(("tuple_state_example (tuple state)", own, short))
        runs.append(("tuple_state_example --adjoint", own, short + ["--adjoint"]))
    return runs


def run(script: pathlib.Path, arguments, shim: pathlib.Path | None, timeout: float):
    """Run one example; return (ran, final loss or None, seconds, last error line)."""
    path = ([str(shim)] if shim else []) + [str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), CUDA_VISIBLE_DEVICES="")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:  # examples may write files next to them
        try:
            done = subprocess.run([sys.executable, "-c", LAUNCH, str(script), *arguments], cwd=work, env=env,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False, None, time.perf_counter() - start, f"timed out after {timeout:.0f} s"
    seconds = time.perf_counter() - start
    losses = LOSS.findall(done.stdout)
    error = ([line for line in done.stderr.strip().splitlines() if line.strip()] or [""])[-1]
    return done.returncode == 0, (float(losses[-1]) if losses else None), seconds, error


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("examples", type=pathlib.Path, help="the examples folder of a torchdiffeq checkout")
    parser.add_argument("--niters", type=int, default=30)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    args = parser.parse_args(argv)
    folder = args.examples.resolve()
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        shim = pathlib.Path(tmp)
        (shim / "torchdiffeq").mkdir()
        (shim / "torchdiffeq" / "__init__.py").write_text(SHIM)
        print(f"{'example':36s} {'helpers':>26s} {'torchdiffeq':>26s}")
        for name, script, arguments in examples(folder, args.niters):
            cells, errors = [], []
            for who in (shim, None):
                ran, loss, seconds, error = run(script, arguments, who, args.timeout)
                shown = f"{loss:.6f}" if loss is not None else "no loss"
                cells.append(f"{'ran' if ran else 'FAILED'}, loss {shown}, {seconds:5.1f} s")
                if not ran:
                    errors.append(f"    {'helpers' if who else 'torchdiffeq'}: {error[:200]}")
                    failed += who is not None
            print(f"{name:36s} {cells[0]:>26s} {cells[1]:>26s}")
            for line in errors:
                print(line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
