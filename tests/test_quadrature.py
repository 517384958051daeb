"""Tests for helpers.quadrature: integrals, derivatives and Jacobians against closed forms."""
import math

import pytest
import torch

from helpers.problems import ExponentialODE, LinearODE
from helpers.quadrature import parameter_jacobian, simpson, simpson_with_error, time_derivative, trapezoid

DT = torch.float64


def grid(n, a=0.0, b=1.0):
    return torch.linspace(a, b, n, dtype=DT)


def test_trapezoid_exact_on_lines_and_second_order_on_curves():
    t = grid(11, 0.0, 2.0)
    assert float(trapezoid(3 * t + 1, t)) == pytest.approx(8.0, abs=1e-14)
    # ∫_0^π sin = 2; the error shrinks four-fold when h halves
    errors = []
    for n in (21, 41, 81):
        t = grid(n, 0.0, math.pi)
        errors.append(abs(float(trapezoid(torch.sin(t), t)) - 2.0))
    assert errors[0] / errors[1] == pytest.approx(4.0, rel=0.01)
    assert errors[1] / errors[2] == pytest.approx(4.0, rel=0.01)


def test_trapezoid_uneven_grid_and_decreasing_grid():
    t = torch.tensor([0.0, 0.1, 0.5, 0.6, 1.0], dtype=DT)
    assert float(trapezoid(2 * t, t)) == pytest.approx(1.0, abs=1e-14)
    assert float(trapezoid(2 * t.flip(0), t.flip(0))) == pytest.approx(-1.0, abs=1e-14)


def test_simpson_exact_on_cubics_and_fourth_order():
    t = grid(5, -1.0, 2.0)
    # ∫_{-1}^{2} (t³ - 2t² + 1) dt = 15/4 - 6 + 3 = 0.75
    assert float(simpson(t ** 3 - 2 * t ** 2 + 1, t)) == pytest.approx(0.75, abs=1e-13)
    errors = []
    for n in (11, 21, 41):
        t = grid(n, 0.0, 1.0)
        errors.append(abs(float(simpson(torch.exp(t), t)) - (math.e - 1)))
    assert errors[0] / errors[1] == pytest.approx(16.0, rel=0.02)
    assert errors[1] / errors[2] == pytest.approx(16.0, rel=0.02)


def test_simpson_integrates_rows_and_matrices_sample_by_sample():
    t = grid(101, 0.0, 1.0)
    row = torch.stack([torch.ones_like(t), t, t ** 2], dim=1)[:, None, :]  # (N, 1, 3): a row vector per time
    out = simpson(row, t)
    assert out.shape == (1, 3)
    assert torch.allclose(out, torch.tensor([[1.0, 1 / 2, 1 / 3]], dtype=DT), atol=1e-14)


def test_simpson_rejects_bad_grids():
    with pytest.raises(ValueError, match="odd"):
        simpson(torch.ones(4, dtype=DT), grid(4))
    with pytest.raises(ValueError, match="uniform"):
        t = torch.tensor([0.0, 0.1, 0.5], dtype=DT)
        simpson(torch.ones(3, dtype=DT), t)
    with pytest.raises(ValueError, match="one sample per time"):
        simpson(torch.ones(4, dtype=DT), grid(5))


def test_simpson_error_estimate_brackets_the_true_error():
    t = grid(41, 0.0, 3.0)
    value, error = simpson_with_error(torch.cos(2 * t), t)
    true_error = abs(float(value) - math.sin(6.0) / 2)
    assert 0.5 * float(error) < true_error < 2.0 * float(error)
    with pytest.raises(ValueError, match="divisible by 4"):
        simpson_with_error(torch.ones(7, dtype=DT), grid(7))


def test_time_derivative_exact_on_quartics_and_fourth_order():
    t = grid(9, 0.0, 2.0)
    y = t ** 4 - t ** 3 + 2 * t
    assert torch.allclose(time_derivative(y, t), 4 * t ** 3 - 3 * t ** 2 + 2, atol=1e-11)
    errors = []
    for n in (21, 41, 81):
        t = grid(n, 0.0, 1.0)
        errors.append(float((time_derivative(torch.sin(3 * t), t) - 3 * torch.cos(3 * t)).abs().max()))
    assert errors[0] / errors[1] == pytest.approx(16.0, rel=0.15)
    assert errors[1] / errors[2] == pytest.approx(16.0, rel=0.15)


def test_time_derivative_keeps_trailing_shape():
    t = grid(30, 0.0, 1.0)
    z = torch.stack([torch.exp(t), -t], dim=1)  # (N, 2): a state per time, as odeint returns
    dz = time_derivative(z, t)
    assert dz.shape == z.shape
    assert torch.allclose(dz[:, 1], -torch.ones_like(t), atol=1e-12)
    assert torch.allclose(dz[:, 0], torch.exp(t), atol=1e-5)


def test_quadrature_is_differentiable():
    a = torch.tensor(1.5, dtype=DT, requires_grad=True)
    t = grid(201, 0.0, 1.0)
    integral = simpson(torch.exp(a * t), t)  # (e^a - 1) / a
    (grad,) = torch.autograd.grad(integral, a)
    exact = (math.exp(1.5) * 1.5 - (math.exp(1.5) - 1)) / 1.5 ** 2
    assert float(grad) == pytest.approx(exact, rel=1e-9)


def test_parameter_jacobian_of_exponential_solution():
    problem = ExponentialODE(0.7, dtype=DT)
    z0 = torch.tensor([1.0, -2.0], dtype=DT)
    t = grid(11, 0.0, 2.0)
    jac = parameter_jacobian(problem, lambda m, z0, t: m.exact(z0, t), z0, t)
    assert jac.shape == (11, 2, 1)
    # z = z0 exp(θ t), so dz/dθ = t z
    expected = (t[:, None] * z0 * torch.exp(0.7 * t[:, None]))[..., None]
    assert torch.allclose(jac, expected, atol=1e-12)
    assert problem.theta.grad is None  # the module's own parameters are not touched


def test_parameter_jacobian_of_linear_solution_matches_finite_differences():
    A = torch.tensor([[-0.3, 1.0], [-1.2, -0.1]], dtype=DT)
    problem = LinearODE(A)
    z0 = torch.tensor([1.0, 0.5], dtype=DT)
    t = grid(9, 0.0, 1.5)
    jac = parameter_jacobian(problem, lambda m, z0, t: m.exact(z0, t), z0, t)
    assert jac.shape == (9, 2, 4)
    eps = 1e-6
    for k in range(4):
        i, j = divmod(k, 2)
        plus, minus = A.clone(), A.clone()
        plus[i, j] += eps
        minus[i, j] -= eps
        fd = (LinearODE(plus).exact(z0, t) - LinearODE(minus).exact(z0, t)) / (2 * eps)
        assert torch.allclose(jac[..., k], fd.detach(), atol=1e-8)
    assert torch.equal(problem.A.detach(), A)


def test_parameter_jacobian_needs_parameters():
    with pytest.raises(ValueError, match="no parameters"):
        parameter_jacobian(torch.nn.Identity(), lambda m, x: m(x), torch.ones(2))


def test_vjps_along_a_linear_field():
    from helpers.quadrature import vjps_along

    A = torch.tensor([[-0.3, 1.0], [-1.2, -0.1]], dtype=DT)
    problem = LinearODE(A)
    t = grid(3)
    z = torch.tensor([[1.0, 0.5], [0.2, -1.0], [2.0, 3.0]], dtype=DT)
    lam = torch.tensor([[1.0, 0.0], [0.5, -2.0], [0.1, 0.3]], dtype=DT)
    lam_fz, lam_ftheta = vjps_along(problem, t, z, lam)
    # f = A z: λ ∂f/∂z = λ A, and ∂(λ A z)/∂A_ij = λ_i z_j
    assert torch.allclose(lam_fz, lam @ A)
    assert torch.allclose(lam_ftheta, (lam[:, :, None] * z[:, None, :]).reshape(3, 4))


def test_vjps_along_a_field_without_some_dependence():
    from helpers.quadrature import vjps_along

    problem = ExponentialODE(0.5, dtype=DT)
    t = grid(2)
    z = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=DT)
    lam = torch.ones_like(z)
    extra = torch.zeros(3, dtype=DT, requires_grad=True)  # a parameter f does not use
    lam_fz, lam_ftheta = vjps_along(problem, t, z, lam, params=[problem.theta, extra])
    assert torch.allclose(lam_fz, 0.5 * lam)
    assert torch.allclose(lam_ftheta, torch.tensor([[3.0, 0, 0, 0], [7.0, 0, 0, 0]], dtype=DT))
    with pytest.raises(ValueError, match="same shape"):
        vjps_along(problem, t, z, lam[:, :1])
