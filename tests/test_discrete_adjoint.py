"""helpers.discrete_adjoint: the discrete adjoint of fixed-step Runge–Kutta methods.

It must give the gradient of the computed loss to rounding (the same numbers as backpropagating
through helpers.odeint), and differ from the continuous adjoint by the solver's error.
"""
from __future__ import annotations

import math

import pytest
import torch

import helpers
from helpers.discrete_adjoint import DiscreteAdjoint, rk_adjoint_step, rk_discrete_adjoint
from helpers.models import MLP
from helpers.problems import LinearODE, TimeDependentODE
from helpers.runge_kutta import rk_step
from helpers.tableaus import DOPRI5, RK4

F64 = torch.float64


def rel_err(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


def flat(tensors) -> torch.Tensor:
    return torch.cat([x.reshape(-1) for x in tensors])


def mlp(device, scale=2.0):
    f = MLP((2, 16, 2), dtype=F64, device=device)
    with torch.no_grad():
        f.net[2].weight.mul_(scale)
    return f


def backprop(f, y0, t, target, **kwargs):
    """Loss 0.5 |z(t1) - target|^2 through helpers.odeint: (z(t1), dL/dy0, dL/dθ)."""
    y0 = y0.clone().requires_grad_(True)
    z1 = helpers.odeint(f, y0, t, **kwargs)[-1]
    loss = 0.5 * ((z1 - target) ** 2).sum()
    dy0, *dtheta = torch.autograd.grad(loss, [y0, *f.parameters()])
    return z1.detach(), dy0, dtheta


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
def test_matches_backprop_through_odeint(method, device):
    f = mlp(device)
    y0 = torch.randn(5, 2, dtype=F64).to(device)
    target = torch.randn(5, 2, dtype=F64).to(device)
    t = torch.tensor([0.0, 1.5], dtype=F64, device=device)
    h = 0.1
    z1, dy0, dtheta = backprop(f, y0, t, target, method=method, options=dict(step_size=h))
    n = math.ceil(1.5 / h - 1e-9)
    grid = torch.linspace(0.0, 1.5, n + 1, dtype=F64, device=device)
    result = rk_discrete_adjoint(f, method, y0, grid, z1 - target)
    assert isinstance(result, DiscreteAdjoint)
    assert rel_err(result.y[-1], z1) < 1e-13
    assert rel_err(result.lam[0], dy0) < 1e-12
    assert rel_err(flat(result.param_grads), flat(dtheta)) < 1e-12
    assert [g.shape for g in result.param_grads] == [p.shape for p in f.parameters()]
    s = helpers.METHODS[method].stages
    assert result.nfe == s * n and result.n_vjp == s * n
    assert result.stored_numel == s * n * y0.numel()
    assert result.y.shape == (n + 1, 5, 2) and result.lam.shape == (n + 1, 5, 2)
    assert torch.equal(result.lam[-1], z1 - target)


def test_one_backward_step_of_midpoint_by_hand():
    """Midpoint on dz/dt = A z: Y_2 = z + (h/2) A z, z' = z + h A Y_2, so ∂z'/∂z = I + hA + (h²/2) A²."""
    A = torch.tensor([[0.2, -1.0], [0.7, -0.4]], dtype=F64)
    f = LinearODE(A)
    z, h = torch.tensor([1.0, 2.0], dtype=F64), torch.tensor(0.3, dtype=F64)
    Y2 = z + 0.5 * h * (z @ A.T)
    stages = [(torch.tensor(0.0, dtype=F64), z), (0.5 * h, Y2)]
    lam_next = torch.tensor([0.5, -1.5], dtype=F64)
    lam_n, param_grads, mus = rk_adjoint_step(f, helpers.METHODS["midpoint"], stages, h, lam_next, [f.A])
    M = torch.eye(2, dtype=F64) + h * A + 0.5 * h ** 2 * A @ A
    assert rel_err(lam_n, lam_next @ M) < 1e-15
    # κ_2 = h λ_{n+1}, μ_2 = κ_2 A, κ_1 = (h/2) μ_2, μ_1 = κ_1 A
    assert rel_err(mus[1], h * lam_next @ A) < 1e-15
    assert rel_err(mus[0], 0.5 * h ** 2 * lam_next @ A @ A) < 1e-15
    # dL/dA = κ_2^T Y_2^T + κ_1^T z^T (f = A z: λ ∂f/∂A is an outer product)
    expected = torch.outer(h * lam_next, Y2) + torch.outer(0.5 * h ** 2 * lam_next @ A, z)
    assert rel_err(param_grads[0], expected) < 1e-15


def test_time_dependent_field_uses_the_stage_times():
    """dz/dt = (a + b cos t) z: the stage times t_n + c_i h enter f; compared with backprop."""
    f = TimeDependentODE(-0.3, 0.8, dtype=F64)
    y0 = torch.tensor([1.0, -2.0], dtype=F64)
    t = torch.tensor([0.5, 3.0], dtype=F64)
    z1, dy0, dtheta = backprop(f, y0, t, torch.zeros(2, dtype=F64), method="rk4", options=dict(step_size=0.25))
    grid = torch.linspace(0.5, 3.0, 11, dtype=F64)
    result = rk_discrete_adjoint(f, RK4, y0, grid, z1)
    assert rel_err(result.lam[0], dy0) < 1e-12
    assert rel_err(flat(result.param_grads), flat(dtheta)) < 1e-12


def test_euler_on_a_linear_system_closed_form():
    """Euler on dz/dt = A z: z_{n+1} = (I + hA) z_n, so λ_n = λ_{n+1} (I + hA) and λ_0 = λ_N (I + hA)^N."""
    A = torch.tensor([[-0.5, 1.0], [-1.0, -0.2]], dtype=F64)
    f = LinearODE(A)
    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    N, T = 16, 2.0
    h = T / N
    grid = torch.linspace(0.0, T, N + 1, dtype=F64)
    lam_N = torch.tensor([0.3, -1.2], dtype=F64)
    result = rk_discrete_adjoint(f, "euler", y0, grid, lam_N)
    M = torch.eye(2, dtype=F64) + h * A
    # rows: z_{n+1}^T = z_n^T M^T, λ_n = λ_{n+1} M
    assert rel_err(result.y[-1], y0 @ torch.linalg.matrix_power(M, N).T) < 1e-14
    for n in range(N + 1):
        assert rel_err(result.lam[n], lam_N @ torch.linalg.matrix_power(M, N - n)) < 1e-14
    # dL/dA = h Σ_n λ_{n+1}^T z_n^T  (f = A z, so λ ∂f/∂A is the outer product λ^T z^T)
    expected = h * sum(torch.outer(result.lam[n + 1], result.y[n]) for n in range(N))
    assert rel_err(result.param_grads[0], expected) < 1e-13


def test_intermediate_adjoints_are_gradients_with_respect_to_the_states():
    """λ_n = ∂L/∂z_n: restart the same solve at z_n (a leaf) and backpropagate."""
    f = mlp("cpu")
    y0 = torch.tensor([0.7, -0.4], dtype=F64)
    target = torch.tensor([0.1, 0.2], dtype=F64)
    grid = torch.linspace(0.0, 1.0, 9, dtype=F64)
    first = rk_discrete_adjoint(f, "rk4", y0, grid, torch.zeros(2, dtype=F64))
    z1 = first.y[-1]
    result = rk_discrete_adjoint(f, "rk4", y0, grid, z1 - target)
    for n in (0, 3, 6):
        zn = result.y[n].clone().requires_grad_(True)
        zN = helpers.odeint(f, zn, grid[n:], method="rk4")[-1]   # one step per grid interval
        (g,) = torch.autograd.grad(0.5 * ((zN - target) ** 2).sum(), zn)
        assert rel_err(result.lam[n], g) < 1e-12


def test_any_explicit_tableau_dopri5_weights_at_fixed_steps():
    """The generic recursion for dopri5's 7 stages (the FSAL stage is not needed) against autograd."""
    f = mlp("cpu")
    y0 = torch.tensor([[0.3, 1.0], [-1.0, 0.2]], dtype=F64)
    grid = torch.linspace(0.0, 1.0, 6, dtype=F64)
    y = y0.clone().requires_grad_(True)
    z = y
    for n in range(5):
        z, _, _, _ = rk_step(f, DOPRI5, grid[n], z, grid[n + 1] - grid[n])
    loss = (z ** 3).sum()
    dy0, *dtheta = torch.autograd.grad(loss, [y, *f.parameters()])
    result = rk_discrete_adjoint(f, DOPRI5, y0, grid, 3 * z.detach() ** 2)
    assert rel_err(result.y[-1], z.detach()) < 1e-14
    assert rel_err(result.lam[0], dy0) < 1e-12
    assert rel_err(flat(result.param_grads), flat(dtheta)) < 1e-12
    assert result.nfe == 6 * 5                     # the seventh (FSAL) stage is skipped
    assert result.n_vjp == 6 * 5                   # stage 2 has b_2 = 0 but feeds stages 3–6, so it is needed


def test_differs_from_the_continuous_adjoint_at_the_order_of_the_method():
    """rk4: |discrete - continuous| shrinks like h^4; the discrete one stays at rounding."""
    f = mlp("cpu")
    y0 = torch.tensor([1.0, -0.5], dtype=F64)
    target = torch.tensor([0.3, 0.8], dtype=F64)
    t = torch.tensor([0.0, 2.0], dtype=F64)
    gaps = []
    for h in (0.2, 0.1, 0.05):
        z1, _, dtheta = backprop(f, y0, t, target, method="rk4", options=dict(step_size=h))
        n = round(2.0 / h)
        result = rk_discrete_adjoint(f, "rk4", y0, torch.linspace(0.0, 2.0, n + 1, dtype=F64), z1 - target)
        assert rel_err(flat(result.param_grads), flat(dtheta)) < 1e-12
        z = helpers.odeint_adjoint(f, y0, t, method="rk4", options=dict(step_size=h))
        cont = torch.autograd.grad(0.5 * ((z[-1] - target) ** 2).sum(), list(f.parameters()))
        gaps.append(rel_err(flat(cont), flat(result.param_grads)))
    orders = [math.log2(a / b) for a, b in zip(gaps, gaps[1:])]
    assert all(3.5 < p < 4.5 for p in orders), (gaps, orders)
    assert gaps[-1] > 1e-10


def test_decreasing_grid_and_explicit_params():
    """A grid that runs backward in time, and gradients for a chosen subset of the parameters."""
    f = mlp("cpu")
    y0 = torch.tensor([0.5, 0.5], dtype=F64)
    t = torch.tensor([1.0, 0.0], dtype=F64)
    z1, dy0, dtheta = backprop(f, y0, t, torch.zeros(2, dtype=F64), method="midpoint", options=dict(step_size=0.125))
    grid = torch.linspace(1.0, 0.0, 9, dtype=F64)
    weight = f.net[0].weight
    result = rk_discrete_adjoint(f, "midpoint", y0, grid, z1, params=[weight])
    assert len(result.param_grads) == 1
    assert rel_err(result.param_grads[0], dtheta[0]) < 1e-12
    assert rel_err(result.lam[0], dy0) < 1e-12


def test_loss_gradient_as_a_function_of_the_final_state():
    """dLdy_final may be a function of z_N, which is known only after the forward pass."""
    f = mlp("cpu")
    y0 = torch.tensor([0.2, -0.1], dtype=F64)
    target = torch.tensor([1.0, 1.0], dtype=F64)
    grid = torch.linspace(0.0, 1.0, 5, dtype=F64)
    seen = []

    def dLdz(zN):
        seen.append(zN.clone())
        return zN - target

    result = rk_discrete_adjoint(f, "rk4", y0, grid, dLdz)
    assert len(seen) == 1 and torch.equal(seen[0], result.y[-1])
    assert torch.equal(result.lam[-1], result.y[-1] - target)
    with pytest.raises(ValueError, match="dLdy_final must have y0's shape"):
        rk_discrete_adjoint(f, "rk4", y0, grid, lambda zN: zN.sum())


def test_a_plain_function_without_parameters():
    y0 = torch.tensor([1.0], dtype=F64)
    grid = torch.linspace(0.0, 1.0, 5, dtype=F64)
    result = rk_discrete_adjoint(lambda t, y: -2.0 * y, "euler", y0, grid, torch.ones(1, dtype=F64))
    assert result.param_grads == ()
    assert abs(result.lam[0].item() - (1 - 2.0 / 4) ** 4) < 1e-15


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(tableau="rk5"), ValueError, "not a known method"),
    (dict(dLdy_final=torch.zeros(3, dtype=F64)), ValueError, "dLdy_final must have y0's shape"),
    (dict(t_grid=torch.tensor([0.0, 1.0, 0.5], dtype=F64)), ValueError, "strictly increasing or strictly decreasing"),
    (dict(t_grid=torch.tensor([0.0], dtype=F64)), ValueError, "at least two times"),
    (dict(y0=torch.tensor([1, 2])), TypeError, "floating-point"),
    (dict(dLdy_final=[1.0, 1.0]), TypeError, "a tensor or a function of z_N"),
])
def test_bad_arguments(kwargs, error, match):
    args = dict(func=lambda t, y: -y, tableau="rk4", y0=torch.tensor([1.0, 2.0], dtype=F64),
                t_grid=torch.linspace(0.0, 1.0, 3, dtype=F64), dLdy_final=torch.ones(2, dtype=F64))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        rk_discrete_adjoint(**args)
