"""helpers.method_comparison: one gradient by each method, with its time, memory and error.

Each method must give dL/dθ of a problem with a closed form to the solver's accuracy, the
discrete adjoint must equal backprop to rounding, and the memory kept must grow with the steps
for backprop and the discrete adjoint and stay flat for the adjoints.
"""
from __future__ import annotations

import gc
import math
import time

import pytest
import torch

from helpers.method_comparison import (
    GRADIENT_METHODS,
    Measurement,
    fastest_of_rounds,
    format_table,
    gradient,
    kept_bytes,
    measure,
)
from helpers.models import MLP
from helpers.problems import ExponentialODE, LinearODE

F64 = torch.float64
RK4 = dict(method="rk4", options=dict(step_size=0.01))


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def exponential():
    """dz/dt = θ z, z(0) = 1, L = z(1)^2 / 2: dL/dθ = exp(2θ)."""
    f = ExponentialODE(0.5, dtype=F64)
    z0 = torch.tensor([1.0], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    return f, z0, t, (lambda z: 0.5 * (z**2).sum()), torch.tensor([math.exp(1.0)], dtype=F64)


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_each_method_matches_the_closed_form(method):
    f, z0, t, loss, exact = exponential()
    g = gradient(method, f, z0, t, loss, solver=RK4, checkpoints=3)
    assert g.shape == (1,)
    assert rel(g, exact) < 1e-9


@pytest.mark.parametrize("method", ["backprop", "backsolve", "checkpointed", "interpolated"])
def test_adaptive_methods_match_the_closed_form_of_a_linear_system(method):
    A = torch.tensor([[-1.0, 0.5], [0.0, -2.0]], dtype=F64)
    f = LinearODE(A)
    z0 = torch.tensor([1.0, 1.0], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)

    def loss(z):
        return (z**2).sum()

    (exact,) = torch.autograd.grad(loss(f.exact(z0, t)[-1]), f.A)
    g = gradient(method, f, z0, t, loss, solver=dict(rtol=1e-10, atol=1e-12))
    assert rel(g, exact.reshape(-1)) < 1e-7


def test_discrete_adjoint_equals_backprop_to_rounding_on_a_network():
    torch.manual_seed(0)
    f = MLP((2, 8, 2), dtype=F64)
    z0 = torch.tensor([[1.0, -0.5], [0.2, 0.3]], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)

    def loss(z):
        return (z.sin() ** 2).sum()

    solver = dict(method="rk4", options=dict(step_size=0.15))  # 7 steps, the last one shorter
    bp = gradient("backprop", f, z0, t, loss, solver=solver)
    disc = gradient("discrete", f, z0, t, loss, solver=solver)
    cont = gradient("backsolve", f, z0, t, loss, solver=solver)
    assert bp.shape == (sum(p.numel() for p in f.parameters()),)
    assert rel(disc, bp) < 1e-13
    assert rel(cont, bp) > 1e-9  # the continuous adjoint is a different approximation


def test_kept_bytes_grow_with_steps_for_backprop_and_the_discrete_adjoint_only():
    torch.manual_seed(0)
    f = MLP((2, 8, 2), dtype=F64)
    z0 = torch.tensor([1.0, -0.5], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)

    def loss(z):
        return (z**2).sum()

    kept = {}
    for n in (10, 20):
        solver = dict(method="rk4", options=dict(step_size=1.0 / n))
        for m in GRADIENT_METHODS:
            kept[m, n] = kept_bytes(m, f, z0, t, loss, solver=solver, checkpoints=4)
    # the discrete adjoint stores 4 stage values of d = 2 numbers per step
    assert kept["discrete", 10] == 10 * 4 * 2 * 8
    assert kept["discrete", 20] == 2 * kept["discrete", 10]
    # backprop keeps the network's activations too: more per step, growing with the steps
    assert kept["backprop", 20] - kept["backprop", 10] > 2 * (kept["discrete", 20] - kept["discrete", 10])
    for m in ("backsolve", "checkpointed"):
        assert kept[m, 10] == kept[m, 20]
    assert kept["checkpointed", 10] > kept["backsolve", 10]
    # the interpolating adjoint stores each step's cubic Hermite polynomial: 4 coefficients of
    # d = 2 numbers (and its step's ends); its memory grows by that much per step
    per_step = (kept["interpolated", 20] - kept["interpolated", 10]) / 10
    assert 4 * 2 * 8 <= per_step <= 8 * 2 * 8


def _timed(cpu: float) -> Measurement:
    return Measurement(method="backprop", seconds=cpu, fastest=cpu, cpu=cpu, fastest_cpu=cpu,
                       kept_bytes=-1, error=float("nan"), nfe_forward=1, nfe_backward=0)


def test_fastest_of_rounds_interleaves_the_cases_and_keeps_each_ones_fastest():
    calls = []
    # a slow spell covers the first two runs: back to back, both of a's runs would fall in it
    clock = iter([9.0, 9.0, 1.0, 2.0, 3.0, 5.0])

    def case(key):
        def run():
            calls.append(key)
            return _timed(next(clock))
        return run

    best = fastest_of_rounds({"a": case("a"), "b": case("b")}, rounds=3)
    assert calls == ["a", "b"] * 3
    assert best["a"].cpu == 1.0 and best["b"].cpu == 2.0
    # and it measures the real thing: one run of a real measurement per round
    f, z0, t, loss, exact = exponential()
    cases = {m: (lambda m=m: measure(m, f, z0, t, loss, reference=exact, repeats=1,
                                     solver=RK4, memory=False))
             for m in ("backprop", "backsolve")}
    found = fastest_of_rounds(cases, rounds=2)
    assert set(found) == {"backprop", "backsolve"}
    assert all(r.error < 1e-9 and r.cpu > 0 for r in found.values())


@pytest.mark.parametrize("rounds", [0, -1, 1.5, "3"])
def test_fastest_of_rounds_rejects_a_bad_number_of_rounds(rounds):
    with pytest.raises(ValueError, match="rounds must be a positive integer"):
        fastest_of_rounds({"a": lambda: _timed(1.0)}, rounds=rounds)


def test_fastest_of_rounds_names_a_case_that_returns_no_measurement():
    with pytest.raises(TypeError, match=r"cases\['a'\] must return a Measurement, got float"):
        fastest_of_rounds({"a": lambda: 1.0}, rounds=1)


def test_measure_reports_time_memory_error_and_work():
    f, z0, t, loss, exact = exponential()
    r = measure("backsolve", f, z0, t, loss, reference=exact, repeats=2, solver=RK4)
    assert isinstance(r, Measurement) and r.method == "backsolve"
    assert 0 < r.fastest <= r.seconds and r.cpu > 0 and r.kept_bytes > 0
    assert 0 < r.fastest_cpu <= r.cpu
    assert r.error < 1e-9
    assert r.nfe_forward == 400 and r.nfe_backward == 400  # 100 rk4 steps each way
    r = measure("discrete", f, z0, t, loss, repeats=1, solver=RK4, memory=False)
    assert math.isnan(r.error) and r.kept_bytes == -1
    assert r.nfe_forward == 400 and r.nfe_backward == 400


def test_measured_processor_time_is_the_work_of_the_calling_thread():
    # another thread's work inside the timed region (a test runner's, a notebook server's) is
    # not the method's: with one torch thread the clock is the calling thread's
    import threading

    f, z0, t, _, _ = exponential()

    def busy():  # 0.3 s of native work in another thread (torch releases the GIL)
        a, end = torch.randn(300, 300), time.perf_counter() + 0.3
        while time.perf_counter() < end:
            a @ a

    def loss_while_another_thread_works(z):
        worker = threading.Thread(target=busy)
        worker.start()
        worker.join()  # this thread waits: wall time passes, its processor time does not
        return 0.5 * (z**2).sum()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = measure("backsolve", f, z0, t, loss_while_another_thread_works, repeats=1,
                    solver=dict(method="rk4", options=dict(step_size=0.1)), memory=False)
    finally:
        torch.set_num_threads(threads)
    assert r.seconds > 0.3  # the other thread's 0.3 s passed inside the timed run
    assert r.cpu < 0.5 * r.seconds  # but only the ten steps' own work was counted


def test_garbage_collection_is_paused_while_timing_and_restored():
    f, z0, t, _, _ = exponential()
    seen = []

    def loss_noting_the_collector(z):
        seen.append(gc.isenabled())
        return 0.5 * (z**2).sum()

    assert gc.isenabled()
    measure("backsolve", f, z0, t, loss_noting_the_collector, repeats=2, solver=RK4,
            memory=False)
    assert seen == [False, False] and gc.isenabled()
    gc.disable()
    try:  # a caller who paused it keeps it paused
        measure("backsolve", f, z0, t, loss_noting_the_collector, repeats=1, solver=RK4,
                memory=False)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_format_table_fits_its_width():
    text = format_table(("n", "method", "ms", "error"),
                        [(14, "backprop", 12.3456, 1.5e-9), (644, "backsolve", 0.5, float("nan"))])
    lines = text.splitlines()
    assert len(lines) == 3 and len({len(x) for x in lines}) == 1
    assert "1.50e-09" in lines[1] and "12.3" in lines[1] and lines[2].endswith("-")
    with pytest.raises(ValueError, match="width=10"):
        format_table(("a", "b"), [("x" * 8, "y" * 8)], width=10)
    with pytest.raises(ValueError, match="2 entries"):
        format_table(("a", "b"), [(1,)])


def test_bad_arguments_raise():
    f, z0, t, loss, _ = exponential()
    with pytest.raises(ValueError, match="method must be one of"):
        gradient("reverse", f, z0, t, loss)
    with pytest.raises(ValueError, match="two times"):
        gradient("backprop", f, z0, torch.tensor([0.0, 0.5, 1.0], dtype=F64), loss)
    with pytest.raises(TypeError, match="loss"):
        gradient("backprop", f, z0, t, 3.0)
    with pytest.raises(ValueError, match="fixed-step method and a step size"):
        gradient("discrete", f, z0, t, loss, solver=dict(method="dopri5"))
    with pytest.raises(TypeError, match="params"):
        gradient("backprop", lambda t, z: -z, z0, t, loss)
    with pytest.raises(ValueError, match="repeats"):
        measure("backprop", f, z0, t, loss, repeats=0)


def test_on_a_fast_decaying_mode_only_the_backsolve_adjoint_fails():
    """dz/dt = A z with a mode decaying at rate 50 over [0, 1]: rebuilding z backward
    amplifies the forward error like e^50; the other methods stay near the tolerance."""
    f = LinearODE(torch.tensor([[-1.0, 0.5], [0.0, -50.0]], dtype=F64))
    z0 = torch.tensor([1.0, 1.0], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)

    def loss(z):
        return (z**2).sum()

    (exact,) = torch.autograd.grad(loss(f.exact(z0, t)[-1]), f.A)
    err = {m: rel(gradient(m, f, z0, t, loss, solver=dict(rtol=1e-6, atol=1e-8)), exact.reshape(-1))
           for m in ("backprop", "backsolve", "checkpointed", "interpolated")}
    assert err["backsolve"] > 1.0
    assert err["backprop"] < 1e-6 and err["interpolated"] < 1e-4 and err["checkpointed"] < 1e-4
