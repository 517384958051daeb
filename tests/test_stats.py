"""SolveStats and last_stats(): the counts match what the solvers actually did."""
from __future__ import annotations

import pytest
import torch

import helpers
from helpers.problems import LinearODE

F64 = torch.float64
FIXED = tuple(name for name, tab in helpers.METHODS.items() if not tab.adaptive)


class Counting:
    """A vector field that counts its calls."""

    def __init__(self, f):
        self.f = f
        self.calls = 0

    def __call__(self, t, y):
        self.calls += 1
        return self.f(t, y)


def setup(device):
    f = LinearODE(torch.tensor([[-0.1, 1.0], [-1.0, -0.1]], dtype=F64, device=device))
    y0 = torch.tensor([1.0, 0.5], dtype=F64, device=device)
    t = torch.tensor([0.0, 0.7, 2.0, 3.0], dtype=F64, device=device)
    return f, y0, t


def options_for(method):
    return dict(step_size=0.1) if method in FIXED else None


@pytest.mark.parametrize("method", sorted(helpers.METHODS))
def test_nfe_forward_counts_every_call(device, method):
    f, y0, t = setup(device)
    func = Counting(f)
    stats = helpers.SolveStats()
    helpers.odeint(func, y0, t, method=method, options=options_for(method), stats=stats)
    print(f"\n{method}: {stats}")
    assert stats.method == method
    assert stats.nfe_forward == func.calls > 0
    assert stats.nfe_backward == stats.steps_accepted_backward == stats.steps_rejected_backward == 0
    tab = helpers.METHODS[method]
    attempts = stats.steps_accepted_forward + stats.steps_rejected_forward
    if tab.adaptive:
        # one evaluation at t0, one for the starting step, then stages - 1 per attempt (FSAL)
        assert stats.nfe_forward == 2 + (tab.stages - 1) * attempts
    else:
        assert stats.steps_rejected_forward == 0
        assert stats.steps_accepted_forward == 30  # 3 time units in steps of at most 0.1
        assert stats.nfe_forward == tab.stages * 30


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "rk4"])
def test_adjoint_counts_forward_then_backward(device, method):
    f, y0, t = setup(device)
    y0 = y0.clone().requires_grad_(True)
    stats = helpers.SolveStats()
    ys = helpers.odeint_adjoint(f, y0, t, method=method, options=options_for(method), stats=stats)
    assert stats.nfe_forward > 0
    assert stats.steps_accepted_forward > 0
    assert stats.nfe_backward == 0 and stats.steps_accepted_backward == 0  # nothing yet
    forward = stats.nfe_forward
    ys.sum().backward()
    print(f"\n{method} adjoint: {stats}")
    assert stats.nfe_forward == forward  # backward does not touch the forward counts
    assert stats.nfe_backward > 0
    assert stats.steps_accepted_backward > 0


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
@pytest.mark.parametrize("need_t", [False, True])
def test_adjoint_counts_match_calls(device, method, need_t):
    """Every evaluation of func, forward and backward, is counted exactly once."""
    f, y0, t = setup(device)
    func = Counting(f)
    y0 = y0.clone().requires_grad_(True)
    t = t.clone().requires_grad_(need_t)
    stats = helpers.SolveStats()
    ys = helpers.odeint_adjoint(func, y0, t, method=method, options=options_for(method),
                                adjoint_params=list(f.parameters()), stats=stats)
    assert stats.nfe_forward == func.calls
    func.calls = 0
    ys.sum().backward()
    assert stats.nfe_backward == func.calls
    if method == "rk4":
        extra = len(t) if need_t else 0  # dL/dt_i = ∂L/∂z(t_i)·f: one evaluation per requested time
        assert stats.steps_accepted_backward == 30
        assert stats.nfe_backward == 4 * 30 + extra


def test_odeint_backward_counts_stay_zero(device):
    f, y0, t = setup(device)
    y0 = y0.clone().requires_grad_(True)
    stats = helpers.SolveStats()
    helpers.odeint(f, y0, t, stats=stats).sum().backward()
    assert stats.nfe_forward > 0
    assert stats.nfe_backward == 0


def test_str_and_fields():
    stats = helpers.SolveStats(method="dopri5", nfe_forward=12, nfe_backward=34, steps_accepted_forward=2,
                               steps_rejected_forward=1, steps_accepted_backward=5, steps_rejected_backward=0)
    text = str(stats)
    assert "NFE forward 12" in text
    assert "backward 34" in text
    assert "2 accepted, 1 rejected" in text
    assert "5 accepted, 0 rejected" in text
    empty = helpers.SolveStats()
    assert (empty.nfe_forward, empty.nfe_backward, empty.method) == (0, 0, "")
    assert "NFE forward 0" in str(empty)


def test_last_stats(device):
    f, y0, t = setup(device)
    helpers.odeint(f, y0, t, method="rk4")
    first = helpers.last_stats()
    assert isinstance(first, helpers.SolveStats)
    assert first.method == "rk4" and first.nfe_forward == 4 * 3
    assert "NFE forward" in str(first)

    mine = helpers.SolveStats()
    helpers.odeint(f, y0, t, stats=mine)
    assert helpers.last_stats() is mine
    assert mine.method == "dopri5"

    y0g = y0.clone().requires_grad_(True)
    ys = helpers.odeint_adjoint(f, y0g, t)
    adjoint_stats = helpers.last_stats()
    assert adjoint_stats is not mine and adjoint_stats.nfe_backward == 0
    ys.sum().backward()
    assert adjoint_stats.nfe_backward > 0  # filled in by the backward pass, same object
    assert helpers.last_stats() is adjoint_stats


def test_stats_accumulate_when_reused(device):
    f, y0, t = setup(device)
    stats = helpers.SolveStats()
    helpers.odeint(f, y0, t, method="rk4", stats=stats)
    helpers.odeint(f, y0, t, method="rk4", stats=stats)
    assert stats.nfe_forward == 2 * 4 * 3
    assert stats.steps_accepted_forward == 2 * 3


def test_stats_of_a_failed_solve():
    """A solve that stops early still reports the work it did."""
    f, y0, t = setup("cpu")
    with pytest.raises(helpers.SolveError):
        helpers.odeint(f, y0, t, options=dict(max_num_steps=4))
    stats = helpers.last_stats()
    assert stats.steps_accepted_forward + stats.steps_rejected_forward == 4
    assert stats.nfe_forward == 2 + 6 * 4


def test_rejected_steps_are_counted(device):
    f, y0, t = setup(device)
    func = Counting(f)
    stats = helpers.SolveStats()
    helpers.odeint(func, y0, t, options=dict(first_step=3.0), stats=stats)  # far too large a first step
    assert stats.steps_rejected_forward >= 1
    assert stats.nfe_forward == func.calls == 1 + 6 * (stats.steps_accepted_forward + stats.steps_rejected_forward)
