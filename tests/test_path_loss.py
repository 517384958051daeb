"""helpers.path_loss: the forced adjoint (-∂g/∂z, -∂g/∂θ and the jumps) against autograd through
helpers.odeint, against the augmented state (z, q) through helpers.odeint_adjoint, and against a
closed form; bad input is refused."""
from __future__ import annotations

import math

import pytest
import torch

import helpers
from helpers.path_loss import RunningCostField, path_loss_gradients
from helpers.problems import ExponentialODE
from helpers.time_gradients import TimeInputMLP

TOL = dict(rtol=1e-10, atol=1e-12)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture
def problem():
    """A tanh MLP that sees t, a running cost with its own parameter w and a point loss at every
    time (t0 included), on five unevenly spaced times."""
    torch.manual_seed(0)
    f = TimeInputMLP((2, 16, 2), dtype=torch.float64)
    w = torch.tensor([0.7, -0.3], dtype=torch.float64, requires_grad=True)

    def g(t, z):
        return 0.5 * (z ** 2).sum() + torch.sin(t) * (w * z).sum()

    t = torch.tensor([0.0, 0.4, 1.1, 1.5, 2.0], dtype=torch.float64)
    y = torch.randn(5, 2, dtype=torch.float64)

    def ell(zs):
        return 0.5 * ((zs[1:] - y[1:]) ** 2).sum() + (zs[0] * y[0]).sum()

    z0 = torch.tensor([1.0, -0.5], dtype=torch.float64)
    return f, g, ell, z0, t, tuple(f.parameters()) + (w,)


def grads(solver, f, g, ell, z0, t, params, **kwargs):
    z0 = z0.clone().requires_grad_(True)
    t = t.clone().requires_grad_(True)
    start = (z0, torch.zeros((), dtype=z0.dtype))
    zs, q = solver(RunningCostField(f, g), start, t, **TOL, **kwargs)
    loss = q[-1] + ell(zs)
    return loss.detach(), torch.autograd.grad(loss, [z0, t, *params])


def test_forced_adjoint_and_augmented_state_agree_with_backprop(problem):
    f, g, ell, z0, t, params = problem
    out = path_loss_gradients(f, g, z0, t, ell, params=params, **TOL)
    loss_bp, bp = grads(helpers.odeint, f, g, ell, z0, t, params)
    loss_aug, aug = grads(helpers.odeint_adjoint, f, g, ell, z0, t, params,
                          adjoint_params=params)
    forced = (out.dLdz0, out.dLdt, *out.dLdtheta)
    # measured (relative): forced vs backprop 6e-11 at worst (W1; dL/dz0 and dL/dt 3e-12),
    # augmented vs backprop 7e-11 (W1); the losses agree to rounding
    assert abs(out.loss - loss_bp) < 1e-13 * abs(loss_bp)
    assert abs(loss_aug - loss_bp) < 1e-13 * abs(loss_bp)
    for name, a, b, c in zip(["z0", "t", "W1", "b1", "W2", "b2", "w"], forced, aug, bp):
        assert rel(a, c) < 3e-10, (name, rel(a, c))
        assert rel(b, c) < 3e-10, (name, rel(b, c))
    # the running cost's own parameter w gets only ∫ ∂g/∂w dt = ∫ sin t z dt, not zero
    assert out.dLdtheta[-1].norm() > 0.1


def test_jumps_are_the_point_loss_gradients_and_lambda_jumps_by_them(problem):
    f, g, ell, z0, t, params = problem
    out = path_loss_gradients(f, g, z0, t, ell, params=params, samples=3, **TOL)
    with torch.no_grad():
        zs = helpers.odeint(f, z0, t, **TOL).requires_grad_(True)
    (expected,) = torch.autograd.grad(ell(zs), zs)
    assert rel(out.jumps, expected) < 1e-9
    # the path: interval i holds 3 samples; t_i for 0 < i < N appears twice, λ(t_i⁻) first
    assert out.path_t.shape == (3 * (len(t) - 1),) and out.path_lam.shape == (12, 2)
    assert torch.equal(out.path_lam[-1], out.jumps[-1])  # λ(t_N) = ∂ℓ/∂z(t_N)
    for i in range(1, len(t) - 1):
        k = 3 * i - 1  # the right end of interval i
        assert out.path_t[k] == out.path_t[k + 1] == t[i]
        jump = out.path_lam[k] - out.path_lam[k + 1]
        assert rel(jump, out.jumps[i]) < 1e-12
    assert rel(out.path_lam[0] + out.jumps[0], out.dLdz0) < 1e-15


def test_running_cost_alone_matches_the_closed_form():
    """dz/dt = -k z, L = ∫_{t0}^{t1} |z|² dt = |z0|² (1 - e^{-2kT}) / (2k), T = t1 - t0."""
    k, t0, t1 = 0.7, 0.3, 2.0
    field = ExponentialODE(-k, dtype=torch.float64)
    z0 = torch.tensor([1.0, -0.5], dtype=torch.float64)
    T, s = t1 - t0, (z0 ** 2).sum().item()
    e = math.exp(-2 * k * T)
    loss = s * (1 - e) / (2 * k)
    dLdtheta = -(s * (T * e / k - (1 - e) / (2 * k ** 2)))  # θ = -k, so dL/dθ = -dL/dk
    dLdz0 = z0 * (1 - e) / k
    dLdt = torch.tensor([-s * e, s * e], dtype=torch.float64)  # -H(t0), H(t1) = g(z(t1))
    out = path_loss_gradients(field, lambda t, z: (z ** 2).sum(), z0,
                              torch.tensor([t0, t1], dtype=torch.float64),
                              rtol=1e-12, atol=1e-14)
    # measured (relative): dL/dt 2.7e-12, dL/dθ 6e-13, dL/dz0 4e-13, the loss 8e-14
    assert abs(out.loss.item() - loss) < 5e-13 * loss
    assert abs(out.dLdtheta[0].item() - dLdtheta) < 5e-12 * abs(dLdtheta)
    assert rel(out.dLdz0, dLdz0) < 3e-12
    assert rel(out.dLdt, dLdt) < 1.5e-11
    assert torch.equal(out.jumps, torch.zeros(2, 2, dtype=torch.float64))


class Weighted(torch.nn.Module):
    """g = c |z|², a running cost with a parameter of its own."""

    def __init__(self):
        super().__init__()
        self.c = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64))

    def forward(self, t, z):
        return self.c * (z ** 2).sum()


def test_default_params_are_those_of_func_and_g():
    field = ExponentialODE(-0.5, dtype=torch.float64)
    weight = Weighted()

    def g(t, z):
        return weight(t, z)

    out = path_loss_gradients(field, g, torch.ones(2, dtype=torch.float64),
                              torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert len(out.dLdtheta) == 1  # g is a plain function: only func's θ
    out = path_loss_gradients(field, weight, torch.ones(2, dtype=torch.float64),
                              torch.tensor([0.0, 1.0], dtype=torch.float64),
                              point_loss=lambda zs: zs[-1].sum())
    assert len(out.dLdtheta) == 2


@pytest.mark.parametrize("kwargs,error,word", [
    (dict(func=3), TypeError, "func"),
    (dict(g="g"), TypeError, "g must"),
    (dict(point_loss=1.0), TypeError, "point_loss"),
    (dict(z0=[1.0, 2.0]), TypeError, "z0"),
    (dict(z0=torch.tensor([1, 2])), TypeError, "z0"),
    (dict(t=torch.tensor([1.0])), ValueError, "t must"),
    (dict(t=torch.tensor([[0.0, 1.0]])), ValueError, "t must"),
    (dict(t=torch.tensor([0.0, 1.0, 1.0])), ValueError, "increasing"),
    (dict(t=[0.0, 1.0]), ValueError, "t must"),
    (dict(samples=1), ValueError, "samples"),
    (dict(samples=2.0), ValueError, "samples"),
])
def test_bad_input_is_refused_with_the_argument_named(kwargs, error, word):
    args = dict(func=ExponentialODE(-0.5), g=lambda t, z: (z ** 2).sum(),
                z0=torch.ones(2), t=torch.tensor([0.0, 1.0]), point_loss=None, samples=2)
    args.update(kwargs)
    with pytest.raises(error, match=word):
        path_loss_gradients(args.pop("func"), args.pop("g"), args.pop("z0"), args.pop("t"),
                            **args)


def test_running_cost_field_refuses_non_callables_and_a_vector_cost():
    with pytest.raises(TypeError, match="func and g"):
        RunningCostField(ExponentialODE(), 2.0)
    with pytest.raises(ValueError, match="g must return a scalar"):
        path_loss_gradients(ExponentialODE(), lambda t, z: z ** 2, torch.ones(2),
                            torch.tensor([0.0, 1.0]))


def test_time_gradients_sum_to_zero_for_an_autonomous_field_and_cost():
    """H = λf + g is constant between observation times when neither f nor g sees t, and drops
    by dL/dt_i across each t_i, so the time gradients sum to zero (chapter 9's sum rule)."""
    torch.manual_seed(1)
    f = TimeInputMLP((2, 8, 2), dtype=torch.float64)
    with torch.no_grad():
        f.mlp.net[0].weight[:, -1] = 0.0  # the column that multiplies t: now autonomous
    y = torch.randn(4, 2, dtype=torch.float64)
    t = torch.tensor([0.0, 0.5, 0.9, 1.6], dtype=torch.float64)
    z0 = torch.tensor([0.8, -0.2], dtype=torch.float64)
    out = path_loss_gradients(f, lambda s, z: (z ** 4).sum(), z0, t,
                              lambda zs: ((zs - y) ** 2).sum(), **TOL)
    # measured: |sum| 4e-14 against a largest term of 1.8
    assert out.dLdt.abs().max() > 0.1
    assert abs(out.dLdt.sum()) < 2e-13 * out.dLdt.abs().max()
