"""The compiled mode (``compiled=True``): the same numbers as eager execution, no recompilation.

Each step (all stages, the error estimate and the update; for the adjoint's backward solve the
augmented dynamics with their vector–Jacobian product too) runs as one ``torch.compile`` graph.
These tests check that this changes the speed and nothing else: outputs and every gradient
(y0, the parameters, every requested time) equal eager execution's to floating-point tolerance
for every method, and a training loop compiles on its first iteration only.

Compilation takes seconds per configuration on a CPU, so the problem is small.
"""
from __future__ import annotations

import pytest
import torch

import helpers
from helpers.models import MLP
from helpers.steppers import resolve_compile

F64 = torch.float64
# fixed-step methods take 0.05-steps; adaptive ones moderate tolerances so steps are few
SETTINGS = {
    "euler": dict(method="euler", options=dict(step_size=0.05)),
    "midpoint": dict(method="midpoint", options=dict(step_size=0.05)),
    "rk4": dict(method="rk4", options=dict(step_size=0.05)),
    "bosh3": dict(method="bosh3", rtol=1e-7, atol=1e-9),
    "dopri5": dict(method="dopri5", rtol=1e-7, atol=1e-9),
}
SOLVERS = {"odeint": helpers.odeint, "odeint_adjoint": helpers.odeint_adjoint}


def problem(device, dtype=F64):
    torch.manual_seed(0)
    func = MLP((3, 16, 3), dtype=dtype, device=device)
    y0 = torch.randn(5, 3, dtype=dtype, device=device)
    t = torch.tensor([0.0, 0.4, 1.0], dtype=dtype, device=device)
    weights = torch.randn(3, 5, 3, dtype=dtype, device=device)
    return func, y0, t, weights


def solve_and_grad(solve, func, y0, t, weights, compiled, **kwargs):
    """Outputs and the gradients of a loss touching every output time, w.r.t. y0, θ and t."""
    func.zero_grad(set_to_none=True)
    y0 = y0.detach().clone().requires_grad_(True)
    t = t.detach().clone().requires_grad_(True)
    stats = helpers.SolveStats()
    ys = solve(func, y0, t, compiled=compiled, stats=stats, **kwargs)
    loss = (weights * ys).sum() + (ys[-1] ** 2).sum()
    loss.backward()
    return ys.detach(), [y0.grad, t.grad] + [p.grad for p in func.parameters()], stats


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.parametrize("method", sorted(SETTINGS))
def test_compiled_equals_eager(device, solver, method):
    func, y0, t, weights = problem(device)
    kwargs = SETTINGS[method]
    ys_e, grads_e, stats_e = solve_and_grad(SOLVERS[solver], func, y0, t, weights, False, **kwargs)
    ys_c, grads_c, stats_c = solve_and_grad(SOLVERS[solver], func, y0, t, weights, True, **kwargs)
    assert rel_err(ys_c, ys_e) < 1e-12
    names = ["y0", "t"] + [f"param {name}" for name, _ in func.named_parameters()]
    for name, g_c, g_e in zip(names, grads_c, grads_e):
        assert g_e is not None and g_c is not None, name
        assert rel_err(g_c, g_e) < 1e-10, f"{name}: compiled vs eager {rel_err(g_c, g_e):.2e}"
    # the same steps were taken: the compiled step changes how, not what
    assert (stats_c.nfe_forward, stats_c.nfe_backward) == (stats_e.nfe_forward, stats_e.nfe_backward)
    assert stats_c.steps_accepted_forward == stats_e.steps_accepted_forward > 0


def test_compiled_adjoint_matches_backprop_and_time_gradients(float64):
    """Compiled adjoint vs compiled backprop at tight tolerance: gradients agree like eager ones do."""
    func, y0, t, weights = problem("cpu")
    kw = dict(method="dopri5", rtol=1e-10, atol=1e-12)
    _, g_adj, _ = solve_and_grad(helpers.odeint_adjoint, func, y0, t, weights, True, **kw)
    _, g_bp, _ = solve_and_grad(helpers.odeint, func, y0, t, weights, True, **kw)
    for a, b in zip(g_adj, g_bp):
        assert rel_err(a, b) < 1e-7


def _dynamo_graphs() -> int:
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("solver,method,options", [
    ("odeint_adjoint", "dopri5", None),
    ("odeint_adjoint", "rk4", dict(step_size=0.1)),
    ("odeint", "dopri5", None),
])
def test_no_recompilation_in_a_training_loop(solver, method, options):
    """After the first iteration, further iterations (new parameters, new data) compile nothing."""
    torch.manual_seed(0)
    func = MLP((2, 32, 2))
    optimizer = torch.optim.Adam(func.parameters(), lr=1e-2)
    t = torch.tensor([0.0, 0.5, 1.0])
    target = torch.randn(3, 64, 2)

    def iteration():
        y0 = torch.randn(64, 2)
        optimizer.zero_grad()
        ys = SOLVERS[solver](func, y0, t, method=method, options=options, rtol=1e-5, atol=1e-6, compiled=True)
        loss = ((ys - target) ** 2).mean()
        loss.backward()
        optimizer.step()
        return loss.item()

    iteration()
    graphs = _dynamo_graphs()
    assert graphs > 0, "the first iteration should have compiled something"
    with torch._dynamo.config.patch(error_on_recompile=True):
        losses = [iteration() for _ in range(3)]
    assert _dynamo_graphs() == graphs, "a later iteration compiled a new graph"
    assert all(map(lambda x: x == x, losses))


def test_compiled_is_really_compiled():
    """The compiled stepper runs a torch.compile graph (not eager code under another name)."""
    from helpers import steppers
    torch.manual_seed(0)
    func = MLP((2, 8, 2))
    helpers.odeint(func, torch.randn(4, 2), torch.tensor([0.0, 1.0]), method="rk4",
                   options=dict(step_size=0.25), compiled=True)
    keys = [k for k in steppers._CACHE if k[:2] == ("forward", "rk4")]
    assert keys
    assert all(hasattr(steppers._CACHE[k], "_torchdynamo_orig_callable") for k in keys)


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_fixed_steps_run_in_chains_or_whole_intervals(monkeypatch, solver):
    """Fixed-step solves on the CPU: a whole interval per compiled call where no gradient flows
    through the solve (both solves of the adjoint), else CHAIN_LENGTH steps per call and single
    steps for the rest (backprop through the compiled steps).

    With step 0.05 the intervals [0, 0.4] and [0.4, 1] hold 8 and 12 steps: one chain of 5 and 3
    single steps, then two chains and 2 single steps; or one loop per interval.
    """
    from helpers import steppers
    assert steppers.CHAIN_LENGTH == 5
    calls = {"loop": 0, "chain": 0, "step": 0}
    loop, chain = steppers.CompiledStepper.loop, steppers.CompiledStepper.chain
    step = steppers.CompiledStepper.__call__

    def counted(name, method):
        def call(self, *args):
            calls[name] += 1
            return method(self, *args)
        return call

    monkeypatch.setattr(steppers.CompiledStepper, "loop", counted("loop", loop))
    monkeypatch.setattr(steppers.CompiledStepper, "chain", counted("chain", chain))
    monkeypatch.setattr(steppers.CompiledStepper, "__call__", counted("step", step))
    func, y0, t, weights = problem("cpu")
    _, _, stats = solve_and_grad(SOLVERS[solver], func, y0, t, weights, True, **SETTINGS["rk4"])
    whole = steppers._while_loop() is not None  # not before torch steppers.WHILE_LOOP_SINCE
    if solver == "odeint_adjoint" and whole:  # two intervals, forward and backward
        assert calls == {"loop": 4, "chain": 0, "step": 0}
        # plus f once at each requested time, for dL/dt there
        assert stats.nfe_backward == 4 * 20 + len(t)
    else:
        solves = 2 if solver == "odeint_adjoint" else 1
        assert calls == {"loop": 0, "chain": 3 * solves, "step": 5 * solves}
    # odeint with t requiring grad evaluates f once more per requested time (the boundary form
    # of the time gradients, helpers.odeint.times_by_boundary_form)
    extra = len(t) if solver == "odeint" else 0  # solve_and_grad asks for dL/dt
    assert stats.nfe_forward == 4 * 20 + extra


def test_one_loop_graph_serves_intervals_of_any_length():
    """The step count is a tensor: intervals of 3, 7 and 20 steps, forward and backward, share
    one graph each way, and each interval's end equals the eager solve's."""
    torch.manual_seed(0)
    func = MLP((2, 8, 2), dtype=F64)
    y0 = torch.randn(4, 2, dtype=F64)
    t = torch.tensor([0.0, 0.3, 1.0, 3.0], dtype=F64)
    kw = dict(method="rk4", options=dict(step_size=0.1))
    with torch.no_grad():
        eager = helpers.odeint(func, y0, t, **kw)
        compiled = helpers.odeint(func, y0, t, compiled=True, **kw)
        graphs = _dynamo_graphs()
        with torch._dynamo.config.patch(error_on_recompile=True):
            again = helpers.odeint(func, y0 + 1, t.flip(0) - 5, compiled=True, **kw)
            eager_again = helpers.odeint(func, y0 + 1, t.flip(0) - 5, **kw)
    assert _dynamo_graphs() == graphs
    assert rel_err(compiled, eager) < 1e-12 and rel_err(again, eager_again) < 1e-12


@pytest.mark.parametrize("value,error,match", [
    ("fast", ValueError, "compiled='fast' is not a torch.compile mode"),
    (1, TypeError, "compiled must be True, False or a torch.compile mode"),
])
def test_bad_compiled_argument(value, error, match):
    func = MLP((2, 8, 2))
    with pytest.raises(error, match=match):
        helpers.odeint(func, torch.randn(4, 2), torch.tensor([0.0, 1.0]), compiled=value)
    assert resolve_compile(True) == "default" and resolve_compile(False) is None


def test_compiled_adjoint_needs_module_parameters():
    func = MLP((2, 8, 2))
    extra = torch.zeros(2, requires_grad=True)

    def field(t, z):
        return func(t, z) + extra

    with pytest.raises(ValueError, match="nn.Module"):
        helpers.odeint_adjoint(field, torch.randn(4, 2), torch.tensor([0.0, 1.0]), adjoint_params=[extra], compiled=True)
    with pytest.raises(ValueError, match="not a parameter of func"):
        helpers.odeint_adjoint(func, torch.randn(4, 2), torch.tensor([0.0, 1.0]),
                               adjoint_params=list(func.parameters()) + [extra], compiled=True)
    # without adjoint parameters the compiled adjoint works for any callable (gradients reach y0)
    y0 = torch.randn(4, 2, requires_grad=True)
    ys = helpers.odeint_adjoint(lambda t, z: -z, y0, torch.tensor([0.0, 1.0]), adjoint_params=(), compiled=True)
    ys[-1].sum().backward()
    torch.testing.assert_close(y0.grad, torch.full_like(y0, torch.exp(torch.tensor(-1.0)).item()), rtol=1e-5, atol=0)


def test_wrong_shape_is_caught_before_compiling():
    with pytest.raises(ValueError, match="returned shape"):
        helpers.odeint(lambda t, z: z[:, :1], torch.randn(4, 2), torch.tensor([0.0, 1.0]), method="rk4", compiled=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_cuda_graphs_mode_equals_eager(solver):
    """compiled="reduce-overhead" (CUDA graphs) on the fixed-step rk4: the same numbers as eager."""
    func, y0, t, weights = problem("cuda", dtype=torch.float32)
    kwargs = SETTINGS["rk4"]
    ys_e, grads_e, _ = solve_and_grad(SOLVERS[solver], func, y0, t, weights, False, **kwargs)
    for _ in range(3):  # CUDA graphs record on a later call than the first
        ys_c, grads_c, _ = solve_and_grad(SOLVERS[solver], func, y0, t, weights, "reduce-overhead", **kwargs)
        assert rel_err(ys_c, ys_e) < 1e-5
        for g_c, g_e in zip(grads_c, grads_e):
            assert rel_err(g_c, g_e) < 1e-4
