"""helpers.minimal_adjoint: the reading version of the adjoint method, checked against the real one."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import helpers
from helpers.minimal_adjoint import minimal_adjoint, rk4_step
from helpers.models import MLP
from helpers.problems import ExponentialODE

F64 = torch.float64


def rel_err(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


def flat(tensors):
    return torch.cat([x.reshape(-1) for x in tensors])


class TimeDependentMLP(nn.Module):
    """f(t, z) = MLP(z) * (1 + t/2): a field that depends on t, to check the stage times."""

    def __init__(self):
        super().__init__()
        self.mlp = MLP((2, 8, 2), dtype=F64)

    def forward(self, t, z):
        return self.mlp(t, z) * (1 + 0.5 * t)


def reference_gradients(func, z0, t0, t1, loss_fn, solve):
    """(loss, dL/dz0, dL/dθ) from autograd through ``solve`` (odeint or odeint_adjoint)."""
    params = [p for p in func.parameters() if p.requires_grad]
    z0 = z0.clone().requires_grad_(True)
    t = torch.tensor([t0, t1], dtype=F64)
    loss = loss_fn(solve(func, z0, t)[-1])
    grads = torch.autograd.grad(loss, [z0, *params])
    return loss.detach(), grads[0], list(grads[1:])


@pytest.mark.parametrize("make_func", [lambda: MLP((2, 8, 2), dtype=F64), TimeDependentMLP],
                         ids=["autonomous", "time-dependent"])
@pytest.mark.parametrize("batch", [False, True])
def test_same_numbers_as_odeint_adjoint_rk4(make_func, batch):
    """The same RK4 steps forward and backward as helpers.odeint_adjoint: equal to rounding."""
    torch.manual_seed(1)
    func = make_func()
    z0 = torch.randn(5, 2, dtype=F64) if batch else torch.tensor([0.8, -0.4], dtype=F64)
    target = torch.randn_like(z0)

    def loss_fn(z1):
        return ((z1 - target) ** 2).sum()

    steps, t0, t1 = 20, 0.25, 1.25
    loss, g_z0, g_theta = minimal_adjoint(func, z0, t0, t1, loss_fn, steps)

    def solve(f, y0, t):
        return helpers.odeint_adjoint(f, y0, t, method="rk4", options=dict(step_size=(t1 - t0) / steps))

    ref_loss, ref_z0, ref_theta = reference_gradients(func, z0, t0, t1, loss_fn, solve)
    assert abs(loss.item() - ref_loss.item()) <= 1e-13 * abs(ref_loss.item())
    assert g_z0.shape == z0.shape
    assert [g.shape for g in g_theta] == [p.shape for p in func.parameters()]
    assert rel_err(g_z0, ref_z0) < 1e-12
    assert rel_err(flat(g_theta), flat(ref_theta)) < 1e-12


def test_converges_to_backprop_at_fourth_order():
    """Against backpropagation through a tight adaptive solve, halving the step divides the error by ~16."""
    torch.manual_seed(0)
    func = MLP((2, 16, 2), dtype=F64)
    with torch.no_grad():
        func.net[2].weight.mul_(3.0)
    z0 = torch.tensor([1.0, -0.5], dtype=F64)
    target = torch.tensor([0.3, 0.8], dtype=F64)

    def loss_fn(z1):
        return 0.5 * ((z1 - target) ** 2).sum()

    def tight(f, y0, t):
        return helpers.odeint(f, y0, t, rtol=1e-12, atol=1e-13)

    _, ref_z0, ref_theta = reference_gradients(func, z0, 0.0, 2.0, loss_fn, tight)
    reference = flat([ref_z0, *ref_theta])
    errors = []
    for steps in (25, 50, 100):
        _, g_z0, g_theta = minimal_adjoint(func, z0, 0.0, 2.0, loss_fn, steps)
        errors.append(rel_err(flat([g_z0, *g_theta]), reference))
    assert errors[-1] < 1e-8
    for coarse, fine in zip(errors, errors[1:]):
        assert 10 < coarse / fine < 24  # 2^4 = 16 for a fourth-order method


def test_exponential_closed_form():
    """dz/dt = θz, L = z(t1)²/2 summed: dL/dz0 = z1 e^{θT}, dL/dθ = T |z1|²."""
    theta, t0, t1 = 0.7, 0.0, 1.5
    func = ExponentialODE(theta, dtype=F64)
    z0 = torch.tensor([1.5, -0.5], dtype=F64)
    loss, g_z0, (g_theta,) = minimal_adjoint(func, z0, t0, t1, lambda z: 0.5 * (z ** 2).sum(), 200)
    z1 = z0 * math.exp(theta * (t1 - t0))
    assert abs(loss.item() / (0.5 * (z1 ** 2).sum().item()) - 1) < 1e-10  # RK4 error ~1e-11
    assert rel_err(g_z0, z1 * math.exp(theta * (t1 - t0))) < 1e-10
    assert abs(g_theta.item() / ((t1 - t0) * (z1 ** 2).sum().item()) - 1) < 1e-10


def test_backward_in_time_and_frozen_parameters():
    """t1 < t0 works (negative steps); parameters with requires_grad=False are not θ."""
    torch.manual_seed(2)
    func = MLP((2, 8, 2), dtype=F64)
    func.net[0].requires_grad_(False)
    z0 = torch.tensor([0.3, 0.6], dtype=F64)

    def loss_fn(z1):
        return (z1 ** 2).sum()

    _, g_z0, g_theta = minimal_adjoint(func, z0, 1.0, 0.0, loss_fn, 20)
    ref = reference_gradients(func, z0, 1.0, 0.0, loss_fn,
                              lambda f, y0, t: helpers.odeint(f, y0, t, method="rk4",
                                                              options=dict(step_size=0.05)))
    assert len(g_theta) == 2  # only the last layer's weight and bias
    assert rel_err(g_z0, ref[1]) < 1e-8
    assert rel_err(flat(g_theta), flat(ref[2])) < 1e-6  # backprop through rk4 vs the adjoint: O(h^4)


def test_leaves_no_graph_and_does_not_touch_grad():
    func = MLP((2, 8, 2), dtype=F64)
    z0 = torch.tensor([0.3, 0.6], dtype=F64, requires_grad=True)
    loss, g_z0, g_theta = minimal_adjoint(func, z0, 0.0, 1.0, lambda z: z.sum(), 5)
    assert not loss.requires_grad and not g_z0.requires_grad
    assert not any(g.requires_grad for g in g_theta)
    assert z0.grad is None and all(p.grad is None for p in func.parameters())


def test_rk4_step_is_exact_for_a_cubic():
    """dy/dt = 3t² (y = t³) and a linear part: classical RK4 integrates both exactly in one step."""
    def rhs(t, state):
        return [torch.tensor(3.0 * t ** 2, dtype=F64), -state[1]]

    y = rk4_step(rhs, 1.0, [torch.tensor(1.0, dtype=F64), torch.tensor(1.0, dtype=F64)], 0.5)
    assert abs(y[0].item() - 1.5 ** 3) < 1e-14
    h = 0.5
    assert abs(y[1].item() - (1 - h + h ** 2 / 2 - h ** 3 / 6 + h ** 4 / 24)) < 1e-14  # RK4's e^{-h}


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(func=lambda t, z: z), TypeError, "func must be a torch.nn.Module"),
    (dict(z0=[1.0, 2.0]), TypeError, "z0 must be a floating-point tensor"),
    (dict(z0=torch.tensor([1, 2])), TypeError, "z0 must be a floating-point tensor"),
    (dict(t1=torch.tensor(1.0)), TypeError, "t1 must be a real number"),
    (dict(t0=True), TypeError, "t0 must be a real number"),
    (dict(t1=0.0), ValueError, "t0 and t1 must differ"),
    (dict(steps=0), ValueError, "steps must be a positive integer"),
    (dict(steps=2.5), ValueError, "steps must be a positive integer"),
])
def test_bad_input(kwargs, error, words):
    args = dict(func=MLP((2, 4, 2), dtype=F64), z0=torch.ones(2, dtype=F64), t0=0.0, t1=1.0,
                loss_fn=lambda z: z.sum(), steps=4)
    args.update(kwargs)
    with pytest.raises(error, match=words):
        minimal_adjoint(**args)
