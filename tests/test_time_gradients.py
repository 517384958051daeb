"""helpers.time_gradients: dL/dt0 by the a_t channel, dL/dt_i by the direct terms.

References: autograd through the closed-form solutions of helpers.problems (exact gradients with
respect to every time), helpers.odeint_adjoint's t.grad, backpropagation through helpers.odeint,
and central finite differences.
"""
from __future__ import annotations

import math

import pytest
import torch

import helpers
from helpers.problems import ExponentialODE, LinearODE, TimeDependentODE
from helpers.time_gradients import TimeAugmentedDynamics, TimeGradients, TimeInputMLP, time_gradients

F64 = torch.float64
TOL = dict(rtol=1e-11, atol=1e-12)


def _forward(func, z0, t, loss_fn):
    """z at every time (no graph to the solver) and ∂L/∂z(t_i) for every i."""
    with torch.no_grad():
        zs = helpers.odeint(func, z0, t, **TOL)
    zs = zs.requires_grad_(True)
    (grad_zs,) = torch.autograd.grad(loss_fn(zs), zs)
    return zs.detach(), grad_zs


def _rel(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_time_dependent_closed_form(device):
    """dz/dt = (a + b cos t) z, L = |z(t1)|²/2: dL/dt1 = |z1|²(a + b cos t1), dL/dt0 = -|z1|²(a + b cos t0)."""
    a, b, t0, t1 = -0.3, 0.8, 0.5, 3.0
    f = TimeDependentODE(a, b, dtype=F64).to(device)
    z0 = torch.tensor([1.0, -2.0], dtype=F64, device=device)
    t = torch.tensor([t0, t1], dtype=F64, device=device)
    zs, grad_zs = _forward(f, z0, t, lambda zs: 0.5 * (zs[-1] ** 2).sum())
    out = time_gradients(f, t, zs, grad_zs, **TOL)
    assert isinstance(out, TimeGradients)
    assert out.dLdt.shape == (2,) and out.a_t.shape == (2,) and out.lam.shape == (2, 2)
    c = (z0 ** 2).sum().item() * math.exp(2 * (a * (t1 - t0) + b * (math.sin(t1) - math.sin(t0))))
    assert abs(out.dLdt[1].item() - c * (a + b * math.cos(t1))) < 1e-9 * c
    expected_t0 = -c * (a + b * math.cos(t0))
    assert abs(out.dLdt[0].item() - expected_t0) < 1e-8 * c          # integral form (a_t channel)
    assert abs(out.dLdt0_boundary.item() - expected_t0) < 1e-8 * c   # boundary form
    # the a_t channel starts at a_t(t1) = -dL/dt1 = -|z1|²(a + b cos t1), and ends at dL/dt0
    assert abs(out.a_t[-1].item() + c * (a + b * math.cos(t1))) < 1e-9 * c
    assert abs(out.a_t[0].item() - expected_t0) < 1e-8 * c
    # λ(t0) = dL/dz0 = z0 e^{2(...)}: the adjoint rides along
    assert _rel(out.lam[0], z0 * c / (z0 ** 2).sum()) < 1e-8


def test_several_times_against_exact_and_adjoint(device):
    """Observation times inside the interval, a loss on all of them: every dL/dt_i against the exact gradient."""
    f = TimeDependentODE(-0.3, 0.8, dtype=F64).to(device)
    z0 = torch.tensor([1.0, -2.0], dtype=F64, device=device)
    times = [0.5, 1.2, 2.0, 3.0]
    w = torch.tensor([0.3, 0.1], dtype=F64, device=device)

    def loss_fn(zs):
        return 0.5 * (zs[1:] ** 2).sum() + (zs[-1] * w).sum()

    t_exact = torch.tensor(times, dtype=F64, device=device, requires_grad=True)
    (g_exact,) = torch.autograd.grad(loss_fn(f.exact(z0, t_exact)), t_exact)
    t = torch.tensor(times, dtype=F64, device=device)
    zs, grad_zs = _forward(f, z0, t, loss_fn)
    out = time_gradients(f, t, zs, grad_zs, **TOL)
    assert _rel(out.dLdt, g_exact) < 1e-8
    assert abs(out.dLdt0_boundary.item() - g_exact[0].item()) < 1e-8 * g_exact.norm().item()
    # what odeint_adjoint puts in t.grad
    t_adj = t.clone().requires_grad_(True)
    loss_fn(helpers.odeint_adjoint(f, z0, t_adj, **TOL)).backward()
    assert _rel(out.dLdt, t_adj.grad) < 1e-8
    # Σ_i dL/dt_i = ∫ λ ∂f/∂t dt, which for this field is far from zero
    assert abs(out.dLdt.sum().item()) > 1.0


def test_autonomous_sum_is_zero(device):
    """For an autonomous f, shifting every time together changes nothing: Σ_i dL/dt_i = 0 and ∂f/∂t = 0."""
    A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=F64, device=device)
    f = LinearODE(A).to(device)
    z0 = torch.tensor([1.0, 0.5], dtype=F64, device=device)
    t = torch.tensor([0.0, 0.4, 1.0, 1.7], dtype=F64, device=device)
    zs, grad_zs = _forward(f, z0, t, lambda zs: (zs[1:] ** 2).sum() + zs[2, 0])
    out = time_gradients(f, t, zs, grad_zs, **TOL)
    assert abs(out.dLdt.sum().item()) < 1e-9 * out.dLdt.abs().max().item()
    # with one observation time, dL/dt0 = -dL/dt1 (starting later = stopping earlier)
    out1 = time_gradients(f, t[[0, -1]], *_forward(f, z0, t[[0, -1]], lambda zs: (zs[-1] ** 2).sum()), **TOL)
    assert abs(out1.dLdt[0].item() + out1.dLdt[1].item()) < 1e-9 * abs(out1.dLdt[1].item())
    # a_t is constant on each interval when ∂f/∂t = 0: it only drops at the observation times
    assert abs(out1.a_t[0].item() - out1.a_t[1].item()) < 1e-12


def test_time_input_mlp_against_backprop_and_finite_differences(device):
    """A tanh MLP with t as input: the a_t channel against backprop through odeint and central differences."""
    torch.manual_seed(0)
    f = TimeInputMLP((2, 16, 2), dtype=F64).to(device)
    with torch.no_grad():
        f.mlp.net[0].weight[:, -1].mul_(3.0)   # make the field depend on t noticeably
    z0 = torch.tensor([[1.0, -0.5], [0.2, 0.7]], dtype=F64, device=device)  # a batch of two rows
    target = torch.tensor([0.3, 0.8], dtype=F64, device=device)
    times = [0.0, 0.6, 1.5]

    def loss_fn(zs):
        return 0.5 * ((zs[-1] - target) ** 2).sum() + 0.2 * zs[1].sum()

    t = torch.tensor(times, dtype=F64, device=device)
    zs, grad_zs = _forward(f, z0, t, loss_fn)
    out = time_gradients(f, t, zs, grad_zs, **TOL)
    t_bp = t.clone().requires_grad_(True)
    loss_fn(helpers.odeint(f, z0, t_bp, **TOL)).backward()
    assert _rel(out.dLdt, t_bp.grad) < 1e-7
    assert abs(out.dLdt[0].item() - out.dLdt0_boundary.item()) < 1e-8 * out.dLdt.norm().item()
    # the field really depends on t: ∫ λ ∂f/∂t dt = Σ_i dL/dt_i is far from 0
    assert abs(out.dLdt.sum().item()) > 1e-2
    eps = 1e-4
    for i in range(len(times)):
        values = []
        for s in (+1, -1):
            tp = t.clone()
            tp[i] += s * eps
            with torch.no_grad():
                values.append(loss_fn(helpers.odeint(f, z0, tp, **TOL)).item())
        fd = (values[0] - values[1]) / (2 * eps)
        assert abs(fd - out.dLdt[i].item()) < 1e-6, (i, fd, out.dLdt[i].item())


def test_backward_in_time(device):
    """t decreasing (t_N < t0): the same formulas; compared with the exact gradient."""
    f = TimeDependentODE(-0.3, 0.8, dtype=F64).to(device)
    z0 = torch.tensor([1.5], dtype=F64, device=device)
    times = [2.0, 1.0, 0.3]
    t_exact = torch.tensor(times, dtype=F64, device=device, requires_grad=True)
    (g_exact,) = torch.autograd.grad((f.exact(z0, t_exact)[1:] ** 2).sum(), t_exact)
    t = torch.tensor(times, dtype=F64, device=device)
    out = time_gradients(f, t, *_forward(f, z0, t, lambda zs: (zs[1:] ** 2).sum()), **TOL)
    assert _rel(out.dLdt, g_exact) < 1e-8


def test_augmented_dynamics_products(device):
    """[f, -λ ∂f/∂z, -λ ∂f/∂t] against the hand-computed derivatives of f = (a + b cos t) z."""
    a, b = -0.3, 0.8
    f = TimeDependentODE(a, b, dtype=F64).to(device)
    dyn = TimeAugmentedDynamics(f, torch.Size([2]))
    z = torch.tensor([1.0, -2.0], dtype=F64, device=device)
    lam = torch.tensor([0.5, 0.25], dtype=F64, device=device)
    t = torch.tensor(0.7, dtype=F64, device=device)
    out = dyn(t, torch.cat([z, lam, torch.zeros(1, dtype=F64, device=device)]))
    rate = a + b * math.cos(0.7)
    expected = torch.cat([rate * z, -rate * lam, (-(lam * z).sum() * (-b * math.sin(0.7))).reshape(1)])
    assert out.shape == (5,)
    assert torch.allclose(out, expected, rtol=1e-14, atol=1e-14)
    # a field that ignores t: zero time channel, not an error
    dyn0 = TimeAugmentedDynamics(ExponentialODE(0.5, dtype=F64).to(device), torch.Size([2]))
    assert dyn0(t, torch.cat([z, lam, torch.zeros(1, dtype=F64, device=device)]))[-1].item() == 0.0


def test_time_input_mlp_shapes(device):
    f = TimeInputMLP((3, 8, 3), dtype=F64).to(device)
    t = torch.tensor(0.3, dtype=F64, device=device)
    assert f(t, torch.zeros(3, dtype=F64, device=device)).shape == (3,)
    assert f(t, torch.zeros(5, 3, dtype=F64, device=device)).shape == (5, 3)
    assert f.mlp.net[0].in_features == 4
    # it is differentiable in t
    t = t.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(t, torch.ones(3, dtype=F64, device=device)).sum(), t)
    assert g.abs().item() > 0
    with pytest.raises(ValueError):
        TimeInputMLP((3,))


def test_bad_arguments():
    f = ExponentialODE(0.5, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    zs = torch.ones(2, 2, dtype=F64)
    with pytest.raises(ValueError, match="shape"):
        time_gradients(f, t, zs, torch.ones(2, 3, dtype=F64))
    with pytest.raises(ValueError, match="one state per time"):
        time_gradients(f, torch.tensor([0.0, 1.0, 2.0], dtype=F64), zs, zs)
    with pytest.raises(ValueError, match="1-D"):
        time_gradients(f, torch.tensor([0.0], dtype=F64), zs[:1], zs[:1])
