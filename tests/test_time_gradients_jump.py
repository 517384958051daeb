"""Time gradients when the field jumps in t: backprop through helpers.odeint must give them right.

dy/dt = 1 before t = 0.5 and 3 after, from y(t0) = 0 with t0 < 0.5 < t1, so
y(t) = (0.5 - t0) + 3 (t - 0.5) for t > 0.5 and every time gradient has a closed form:
dy(t_i)/dt0 = -f(t0) = -1 and dy(t_i)/dt_i = f(t_i) = 3. Backpropagating through the steps
gave -3 for dL/dt0 (adaptive: only the last step stretches with t0) and, with fixed steps,
the average slope (2.03) for dL/dt1; helpers.odeint now routes them through the boundary form
(helpers.odeint.times_by_boundary_form), as odeint_adjoint does.
"""
from __future__ import annotations

import pytest
import torch

import helpers

F64 = torch.float64


def jump_field(t, y):
    return torch.where(t < 0.5, torch.ones_like(y), 3 * torch.ones_like(y))


@pytest.mark.parametrize("solver", ["odeint", "odeint_adjoint"])
@pytest.mark.parametrize("method,options", [("dopri5", None), ("rk4", {"step_size": 0.1}),
                                            ("euler", {"step_size": 0.01})])
def test_time_gradients_across_a_jump_match_the_closed_form(solver, method, options):
    t = torch.tensor([0.1, 0.7, 1.0], dtype=F64, requires_grad=True)
    y0 = torch.zeros(2, dtype=F64, requires_grad=True)
    ys = getattr(helpers, solver)(jump_field, y0, t, method=method, options=options)
    weights = torch.tensor([[5.0, -1.0], [1.0, 2.0], [0.5, 1.5]], dtype=F64)
    loss = (weights * ys).sum()  # reads z(t0) too: that term does not move with t0
    grad_t, grad_y0 = torch.autograd.grad(loss, (t, y0))
    per_output = weights.sum(dim=1)  # ∂L/∂y(t_i) · (1, 1)
    exact_t = torch.stack([-(per_output[1] + per_output[2]) * 1.0,  # -λ(t0)·f(t0), f(t0) = 1
                           per_output[1] * 3.0, per_output[2] * 3.0])
    assert torch.allclose(grad_t, exact_t, atol=1e-9), (grad_t, exact_t)
    assert torch.allclose(grad_y0, weights.sum(dim=0), atol=1e-12)


def test_values_do_not_change_and_the_cost_is_one_evaluation_per_time():
    t = torch.tensor([0.0, 0.3, 1.0], dtype=F64)
    y0 = torch.tensor([1.0, -1.0], dtype=F64)
    field = lambda s, y: torch.stack([y[1], -y[0]]) * (1 + s)  # noqa: E731
    plain, with_grad = helpers.SolveStats(), helpers.SolveStats()
    ys_plain = helpers.odeint(field, y0, t, stats=plain)
    ys_grad = helpers.odeint(field, y0, t.clone().requires_grad_(True), stats=with_grad)
    assert torch.equal(ys_plain, ys_grad.detach())
    assert with_grad.nfe_forward == plain.nfe_forward + len(t)
