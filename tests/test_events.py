"""Solving until an event (helpers.events): the event time and its gradient.

dz/dt = -k z from z(t0) = z0 reaches z = c at t* = t0 + ln(z0 / c) / k, so every derivative of
t* (with respect to k, z0, c and t0) has a closed form; the implicit-function-theorem gradient
must match it, whichever way the state was differentiated (backprop or a second adjoint solve).
"""
from __future__ import annotations

import pytest
import torch

import helpers
from helpers.errors import SolveError
from helpers.events import odeint_until_event
from helpers.options import make_settings
from helpers.solve import integrate
from helpers.stats import StepCounter

F64 = torch.float64
CASES = [("dopri5", None, 1e-9), ("bosh3", None, 1e-8), ("rk4", {"step_size": 0.01}, 1e-9),
         ("euler", {"step_size": 1e-3}, 3e-3)]


def problem(t0_value=0.3, reverse=False):
    k = torch.tensor(-0.7 if reverse else 0.7, dtype=F64, requires_grad=True)
    z0 = torch.tensor([2.0], dtype=F64, requires_grad=True)
    c = torch.tensor(0.5, dtype=F64, requires_grad=True)
    t0 = torch.tensor(t0_value, dtype=F64, requires_grad=True)
    return k, z0, c, t0


def solve(method, options, k, z0, c, t0, adjoint=False, reverse=False):
    settings = make_settings(method, 1e-10, 1e-12, options)
    f = lambda t, z: -k * z  # noqa: E731
    g = lambda t, z: z.sum() - c  # noqa: E731
    t = torch.stack([t0, t0 + (-1.0 if reverse else 1.0)])
    solve_again = None
    if adjoint:
        def solve_again(y0, t):
            return helpers.odeint_adjoint(f, y0, t, method=method, options=options, rtol=1e-10,
                                          atol=1e-12, adjoint_params=[k])
    return odeint_until_event(f, z0, t, g, settings, StepCounter(), integrate, adjoint_solve=solve_again)


@pytest.mark.parametrize("adjoint", [False, True], ids=["backprop", "adjoint"])
@pytest.mark.parametrize("method,options,tol", CASES, ids=[c[0] for c in CASES])
def test_event_time_and_its_gradient_match_the_closed_form(method, options, tol, adjoint):
    k, z0, c, t0 = problem()
    t_event, solution = solve(method, options, k, z0, c, t0, adjoint=adjoint)
    exact = t0 + torch.log(z0[0] / c) / k
    assert solution.shape == (2, 1)
    assert abs(float(t_event - exact)) < tol * 10
    assert abs(float(solution[-1, 0] - c)) < 1e-9 * 10 + tol  # the state sits on the event surface
    got = torch.autograd.grad(t_event, (k, z0, c, t0))
    want = torch.autograd.grad(t0 + torch.log(z0[0] / c) / k, (k, z0, c, t0))
    for name, a, b in zip(("k", "z0", "c", "t0"), got, want):
        assert abs(float(a - b)) < tol * 10 * max(1.0, abs(float(b))), (name, float(a), float(b))


def test_the_state_at_the_event_moves_with_the_event_time():
    # z(t*) = c whatever k is, so d z(t*)/dk = 0 and d z(t*)/dc = 1: only true when the state's
    # gradient includes f(t*, z*) dt*/dp on top of its gradient at a fixed time
    k, z0, c, t0 = problem()
    _, solution = solve("dopri5", None, k, z0, c, t0)
    dk, dc = torch.autograd.grad(solution[-1, 0], (k, c))
    assert abs(float(dk)) < 1e-8 and abs(float(dc) - 1) < 1e-8


def test_backward_in_time():
    k, z0, c, t0 = problem(reverse=True)  # dz/dt = 0.7 z decays toward the past
    t_event, _ = solve("dopri5", None, k, z0, c, t0, reverse=True)
    exact = t0 + torch.log(z0[0] / c) / k
    assert float(t_event) < float(t0)
    assert abs(float(t_event - exact)) < 1e-8


def test_no_event_is_an_error_that_says_so():
    k, z0, _, t0 = problem()
    c = torch.tensor(-1.0, dtype=F64)  # z stays positive: never crossed
    settings = make_settings("rk4", 1e-7, 1e-9, {"step_size": 0.5, "max_num_steps": 50})
    with pytest.raises(SolveError, match="no event"):
        odeint_until_event(lambda t, z: -k * z, z0, torch.stack([t0, t0 + 1]),
                           lambda t, z: z.sum() - c, settings, StepCounter(), integrate)


def test_fixed_step_methods_need_a_step_size():
    k, z0, c, t0 = problem()
    settings = make_settings("rk4", 1e-7, 1e-9, None)
    with pytest.raises(ValueError, match="step_size"):
        odeint_until_event(lambda t, z: -k * z, z0, torch.stack([t0, t0 + 1]),
                           lambda t, z: z.sum() - c, settings, StepCounter(), integrate)


def test_an_event_already_true_at_the_start_is_refused():
    k, z0, _, t0 = problem()
    settings = make_settings("dopri5", 1e-7, 1e-9, None)
    with pytest.raises(ValueError, match="already zero"):
        odeint_until_event(lambda t, z: -k * z, z0, torch.stack([t0, t0 + 1]),
                           lambda t, z: z.sum() - 2.0, settings, StepCounter(), integrate)
