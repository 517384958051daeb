"""Whole solves in one compiled call (``compiled=True`` on the CPU, no gradient through the solve).

Both solves of ``odeint_adjoint`` need no gradient, so on the CPU each runs as one
``while_loop``: fixed-step methods an interval per call (``CompiledStepper.loop``), adaptive ones
the whole solve, accept/reject decisions included (``helpers.adaptive_loop``). These tests check
that the loops are really taken, that they take the eager solver's steps and give its numbers,
and that a solve the loop cannot finish ends in the eager solver's own error.
"""
from __future__ import annotations

import pytest
import torch

import helpers
from helpers import adaptive_loop, steppers
from helpers.errors import SolveError
from helpers.models import MLP

F64 = torch.float64
# torch older than steppers.WHILE_LOOP_SINCE (Colab's 2.9) compiles a call per step instead:
# the same numbers, other calls
LOOPS = steppers._while_loop() is not None


def problem(dtype=F64):
    torch.manual_seed(0)
    func = MLP((2, 16, 2), dtype=dtype)
    y0 = torch.randn(6, 2, dtype=dtype)
    t = torch.tensor([0.0, 0.3, 1.1, 2.0], dtype=dtype)
    return func, y0, t


def adjoint_run(func, y0, t, compiled, **kwargs):
    func.zero_grad(set_to_none=True)
    y0 = y0.detach().clone().requires_grad_(True)
    stats = helpers.SolveStats()
    ys = helpers.odeint_adjoint(func, y0, t, compiled=compiled, stats=stats, **kwargs)
    (ys ** 2).sum().backward()
    return ys.detach(), [y0.grad] + [p.grad for p in func.parameters()], stats


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def counting(monkeypatch):
    """Count whole-solve calls and single compiled steps."""
    calls = {"adaptive loop": 0, "step": 0}
    one_call, step = adaptive_loop.solve_in_one_call, steppers.CompiledStepper.__call__

    def counted_loop(*args, **kwargs):
        calls["adaptive loop"] += 1
        return one_call(*args, **kwargs)

    def counted_step(self, *args, **kwargs):
        calls["step"] += 1
        return step(self, *args, **kwargs)

    monkeypatch.setattr(adaptive_loop, "solve_in_one_call", counted_loop)
    monkeypatch.setattr(steppers.CompiledStepper, "__call__", counted_step)
    return calls


@pytest.mark.parametrize("method", ["dopri5", "adaptive_heun", "dopri8"])
def test_adaptive_adjoint_runs_each_solve_in_one_call(monkeypatch, method):
    """dopri5 (its own dense output), adaptive_heun (Hermite) and dopri8 (none: it steps onto
    each requested time): the same steps, states and gradients as eager, without a single
    compiled step called from Python."""
    func, y0, t = problem()
    kw = dict(method=method, rtol=1e-7, atol=1e-9)
    ys_e, g_e, st_e = adjoint_run(func, y0, t, False, **kw)
    calls = counting(monkeypatch)
    ys_c, g_c, st_c = adjoint_run(func, y0, t, True, **kw)
    if LOOPS:  # one forward solve over all of t, one backward solve per interval
        assert calls == {"adaptive loop": 1 + (len(t) - 1), "step": 0}
    else:
        assert calls["adaptive loop"] == 0 and calls["step"] > 0
    assert rel_err(ys_c, ys_e) < 1e-12
    for a, b in zip(g_c, g_e):
        assert rel_err(a, b) < 1e-10
    for field in ("nfe_forward", "nfe_backward", "steps_accepted_forward", "steps_rejected_forward",
                  "steps_accepted_backward", "steps_rejected_backward"):
        assert getattr(st_c, field) == getattr(st_e, field), field
    assert st_e.steps_accepted_forward >= len(t) - 1
    if method == "dopri5":  # a rejected step too: the loop's reject branch took it as eager did
        assert st_e.steps_rejected_forward + st_e.steps_rejected_backward > 0


def test_float32_loop_matches_eager_to_rounding():
    func, y0, t = problem(torch.float32)
    kw = dict(method="dopri5", rtol=1e-5, atol=1e-6)
    ys_e, g_e, st_e = adjoint_run(func, y0, t, False, **kw)
    ys_c, g_c, st_c = adjoint_run(func, y0, t, True, **kw)
    assert rel_err(ys_c, ys_e) < 1e-5
    assert max(rel_err(a, b) for a, b in zip(g_c, g_e)) < 1e-5
    assert st_c.nfe_forward == st_e.nfe_forward


def test_a_solve_the_loop_cannot_finish_raises_the_eager_error(monkeypatch):
    """max_num_steps too small: the loop stops short, the eager loop retakes the solve and
    raises its own message."""
    func, y0, t = problem()
    kw = dict(method="dopri5", rtol=1e-9, atol=1e-11, options=dict(max_num_steps=5))
    with pytest.raises(SolveError) as eager:
        helpers.odeint_adjoint(func, y0, t, **kw)
    calls = counting(monkeypatch)
    with pytest.raises(SolveError) as compiled:
        helpers.odeint_adjoint(func, y0, t, compiled=True, **kw)
    assert calls["adaptive loop"] == LOOPS and calls["step"] > 0  # whole, then step by step
    assert str(compiled.value) == str(eager.value)
    assert "max_num_steps=5" in str(compiled.value)


def test_backprop_keeps_single_compiled_steps(monkeypatch):
    """Backpropagation differentiates the steps, which a while_loop would hide: no whole-solve."""
    func, y0, t = problem()
    calls = counting(monkeypatch)
    ys = helpers.odeint(func, y0, t, method="dopri5", rtol=1e-6, atol=1e-8, compiled=True)
    ys.sum().backward()
    assert calls["adaptive loop"] == 0 and calls["step"] > 0


# run in a fresh process: the whole-solve adjoint of problem(), compiled, then inductor's
# on-disk cache counters and the gradients
_CACHE_RUN = """
import json, torch
from torch._dynamo.utils import counters
import helpers
from tests.test_compiled_loops import adjoint_run, problem
func, y0, t = problem()
kw = dict(method="dopri5", rtol=1e-7, atol=1e-9)
_, grads, _ = adjoint_run(func, y0, t, True, **kw)
_, eager, _ = adjoint_run(func, y0, t, False, **kw)
print(json.dumps(dict(
    counts={k: v for k, v in counters["inductor"].items() if k.startswith("fxgraph_cache")},
    grads=[g.tolist() for g in grads], eager=[g.tolist() for g in eager])))
"""


@pytest.mark.skipif(not LOOPS, reason="this torch compiles a call per step, no while_loop")
def test_a_later_process_takes_the_loops_from_inductors_disk_cache(tmp_path):
    """compile_options marks while_loop cacheable: a second process compiles nothing anew, and
    its gradients are the first process's bit for bit."""
    import json
    import os
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"), PYTHONPATH=str(root))
    runs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", _CACHE_RUN], cwd=root, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    first, second = runs
    assert first["counts"].get("fxgraph_cache_miss", 0) > 0
    assert second["counts"].get("fxgraph_cache_hit", 0) > 0
    assert second["counts"].get("fxgraph_cache_miss", 0) == 0, second["counts"]
    assert second["counts"].get("fxgraph_cache_bypass", 0) == 0, second["counts"]
    assert second["grads"] == first["grads"]
    eager = [torch.tensor(g, dtype=F64) for g in first["eager"]]
    warm = [torch.tensor(g, dtype=F64) for g in second["grads"]]
    assert max(rel_err(a, b) for a, b in zip(warm, eager)) < 1e-6
