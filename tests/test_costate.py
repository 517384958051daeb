"""helpers.costate.adjoint_path: the adjoint λ(t) on a grid, checked against closed forms and autograd."""
from __future__ import annotations

import math

import pytest
import torch

import helpers
from helpers.costate import AdjointPath, adjoint_path
from helpers.models import MLP
from helpers.problems import ExponentialODE, LinearODE, TimeDependentODE

F64 = torch.float64
TOL = dict(rtol=1e-11, atol=1e-12)


def rel_err(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_exponential_closed_form(device):
    """dz/dt = θz: z(t) = z1 e^{θ(t - t1)}, λ(t) = λ1 e^{θ(t1 - t)}, a_θ(t) = λ1 z1 (t1 - t)."""
    theta, t0, t1 = 0.7, 0.5, 2.0
    f = ExponentialODE(theta, dtype=F64).to(device)
    z0 = torch.tensor([1.5, -0.5], dtype=F64, device=device)
    t = torch.linspace(t0, t1, 31, dtype=F64, device=device)
    z1 = z0 * math.exp(theta * (t1 - t0))
    lam1 = z1.clone()  # L = |z(t1)|^2 / 2
    path = adjoint_path(f, z1, lam1, t, **TOL)
    assert isinstance(path, AdjointPath)
    assert path.z.shape == (31, 2) and path.lam.shape == (31, 2) and path.a_theta.shape == (31, 1)
    z_exact = z1 * torch.exp(theta * (t - t1))[:, None]
    lam_exact = lam1 * torch.exp(theta * (t1 - t))[:, None]
    a_exact = (lam1 * z1).sum() * (t1 - t)
    assert rel_err(path.z, z_exact) < 1e-10
    assert rel_err(path.lam, lam_exact) < 1e-10
    assert (path.a_theta[:, 0] - a_exact).abs().max().item() < 1e-9
    # ends: λ(t1) = ∂L/∂z(t1), a_θ(t1) = 0 exactly
    assert torch.equal(path.lam[-1], lam1)
    assert path.a_theta[-1].abs().max().item() == 0.0
    # dL/dθ = |z1|^2 (t1 - t0) = |z0|^2 (t1 - t0) e^{2θ(t1 - t0)}
    expected = (z0 ** 2).sum().item() * (t1 - t0) * math.exp(2 * theta * (t1 - t0))
    assert abs(path.param_grads()[0].item() - expected) < 1e-9 * expected


def test_linear_closed_form_and_gradients(device):
    """dz/dt = A z: λ(t) = λ(t1) expm(A (t1 - t)); a_A(t0) against autograd through the exact solution."""
    A = torch.tensor([[-0.1, 2.0], [-2.0, -0.3]], dtype=F64, device=device)
    f = LinearODE(A).to(device)
    z0 = torch.tensor([[1.0, 0.5], [-0.3, 2.0]], dtype=F64, device=device)  # a batch of two rows
    t = torch.linspace(0.0, 1.5, 16, dtype=F64, device=device)
    target = torch.tensor([0.2, -0.4], dtype=F64, device=device)

    z0g = z0.clone().requires_grad_(True)
    zT = f.exact(z0g, t)[-1]
    loss = 0.5 * ((zT - target) ** 2).sum()
    dA, dz0 = torch.autograd.grad(loss, (f.A, z0g))
    lam1 = (zT - target).detach()

    path = adjoint_path(f, zT.detach(), lam1, t, **TOL)
    t1 = t[-1]
    # rows: λ(t) = λ(t1) expm(A (t1 - t)); z(t) = z(t1) expm(A (t - t1))^T
    lam_exact = torch.stack([lam1 @ torch.linalg.matrix_exp(A * (t1 - ti)) for ti in t])
    z_exact = torch.stack([zT.detach() @ torch.linalg.matrix_exp(A * (ti - t1)).T for ti in t])
    assert rel_err(path.lam, lam_exact) < 1e-9
    assert rel_err(path.z, z_exact) < 1e-9
    assert rel_err(path.lam[0], dz0) < 1e-9
    (gA,) = path.param_grads()
    assert gA.shape == A.shape
    assert rel_err(gA, dA) < 1e-9
    # for a linear homogeneous field λ(t) z(t)^T is constant in t (one value per batch row)
    inner = (path.lam * path.z).sum(-1)
    assert (inner - inner[-1]).abs().max().item() < 1e-9


def test_time_dependent_closed_form(device):
    """dz/dt = (a + b cos t) z: dL/da = λ1 z1 (t1 - t0), dL/db = λ1 z1 (sin t1 - sin t0)."""
    f = TimeDependentODE(a=-0.3, b=0.8, dtype=F64).to(device)
    z0 = torch.tensor([1.0, -2.0], dtype=F64, device=device)
    t = torch.linspace(0.3, 2.5, 12, dtype=F64, device=device)
    with torch.no_grad():
        z1 = f.exact(z0, t)[-1]
    path = adjoint_path(f, z1, z1, t, **TOL)
    c = (z1 * z1).sum().item()
    da, db = (g.item() for g in path.param_grads())
    assert abs(da - c * (2.5 - 0.3)) < 1e-9 * c
    assert abs(db - c * (torch.sin(t[-1]) - torch.sin(t[0])).item()) < 1e-9 * c


def test_mlp_matches_autograd_through_solver(device):
    torch.manual_seed(0)
    f = MLP((3, 16, 3), dtype=F64).to(device)
    z0 = torch.tensor([0.5, -1.0, 0.25], dtype=F64, device=device, requires_grad=True)
    t = torch.linspace(0.0, 1.0, 9, dtype=F64, device=device)
    zs = helpers.odeint(f, z0, t, **TOL)
    loss = torch.sin(zs[-1]).sum() + (zs[-1] ** 2).sum()
    params = tuple(f.parameters())
    grads = torch.autograd.grad(loss, (z0,) + params)
    lam1 = (torch.cos(zs[-1]) + 2 * zs[-1]).detach()
    path = adjoint_path(f, zs[-1].detach(), lam1, t, **TOL)
    assert rel_err(path.lam[0], grads[0]) < 1e-8
    for got, want in zip(path.param_grads(), grads[1:]):
        assert got.shape == want.shape
        assert rel_err(got, want) < 1e-7
    # the z channel retraces the forward trajectory
    assert rel_err(path.z, zs.detach()) < 1e-8
    # at an intermediate time, a_θ(t_k) is the gradient of L with the solve started at t_k
    k = 4
    zk = zs[k].detach().requires_grad_(True)
    loss_k = (lambda y: torch.sin(y).sum() + (y ** 2).sum())(helpers.odeint(f, zk, t[k:], **TOL)[-1])
    grads_k = torch.autograd.grad(loss_k, (zk,) + params)
    assert rel_err(path.lam[k], grads_k[0]) < 1e-7
    for got, want in zip(path.param_grads(k), grads_k[1:]):
        assert rel_err(got, want) < 1e-7


def test_plain_function_without_params_and_decreasing_grid(device):
    """A callable that is not a module: no parameter channel; the grid may run either way."""
    def f(t, z):
        return -z ** 3

    z1 = torch.tensor([0.5], dtype=F64, device=device)  # backward, z grows: 1/z^2 = 1/z1^2 - 2 (t1 - t) stays > 0
    t = torch.linspace(0.0, 1.0, 5, dtype=F64, device=device)
    path = adjoint_path(f, z1, torch.ones_like(z1), t, **TOL)
    assert path.a_theta.shape == (5, 0)
    # λ(t0) = dz(t1)/dz(t0) for dz/dt = -z^3: z(t1) = z0 / sqrt(1 + 2 z0^2 T), derivative (1 + 2 z0^2 T)^{-3/2}
    z0 = path.z[0, 0].item()
    assert abs(path.lam[0, 0].item() - (1 + 2 * z0 ** 2) ** -1.5) < 1e-9
    # a decreasing grid: "t0" is 1.0 and "t1" is 0.0; the solve then runs forward in time
    z_start = torch.tensor([0.8], dtype=F64, device=device)
    back = adjoint_path(f, z_start, torch.ones_like(z_start), t.flip(0), **TOL)
    assert back.t[0].item() == 1.0
    zs_true = 0.8 / torch.sqrt(1 + 2 * 0.64 * (t.flip(0) - 0.0))  # z(s) with z(0) = 0.8 gone forward to s
    assert rel_err(back.z, zs_true[:, None]) < 1e-9


def test_bad_arguments():
    f = ExponentialODE(0.5, dtype=F64)
    z1 = torch.ones(2, dtype=F64)
    t = torch.linspace(0, 1, 3, dtype=F64)
    with pytest.raises(ValueError, match="shape"):
        adjoint_path(f, z1, torch.ones(3, dtype=F64), t)
    with pytest.raises(ValueError, match="requires_grad"):
        adjoint_path(f, z1, z1, t, params=[torch.ones(1, dtype=F64)])
