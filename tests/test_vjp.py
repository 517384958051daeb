"""helpers.vjp: the three ways of computing λ ∂f/∂z and λ ∂f/∂θ agree with each other and with
products written out by hand; time_call returns sensible numbers (its values are not asserted)."""
from __future__ import annotations

import time

import pytest
import torch

from helpers import AugmentedDynamics
from helpers.models import MLP, Spiral
from helpers.problems import LinearODE
from helpers.vjp import (jacobians, time_call, time_calls, vjp_autograd, vjp_func,
                         vjp_via_jacobian)

F64 = torch.float64
ROUTES = [vjp_autograd, vjp_func, vjp_via_jacobian]


def close(a, b, tol=1e-12) -> bool:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item() < tol


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.__name__)
def test_linear_field_by_hand(device, route):
    """f(z) = z A^T on rows: λ ∂f/∂z = λ A and λ ∂f/∂A = Σ_b λ_b^T z_b."""
    A = torch.randn(4, 4, dtype=F64, device=device)
    f = LinearODE(A).to(device)
    z = torch.randn(3, 4, dtype=F64, device=device)
    lam = torch.randn(3, 4, dtype=F64, device=device)
    vz, (vA,) = route(f, torch.tensor(0.0, dtype=F64, device=device), z, lam)
    assert vz.shape == z.shape and vA.shape == A.shape
    assert close(vz, lam @ A)
    assert close(vA, lam.T @ z)


@pytest.mark.parametrize("route", [vjp_func, vjp_via_jacobian], ids=lambda r: r.__name__)
@pytest.mark.parametrize("shape", [(5,), (2, 5)], ids=["single", "batch"])
def test_routes_agree_on_mlp(device, route, shape):
    f = MLP((5, 32, 5), dtype=F64).to(device)
    t = torch.tensor(0.3, dtype=F64, device=device)
    z = torch.randn(*shape, dtype=F64, device=device)
    lam = torch.randn(*shape, dtype=F64, device=device)
    ref_z, ref_theta = vjp_autograd(f, t, z, lam)
    got_z, got_theta = route(f, t, z, lam)
    assert close(got_z, ref_z)
    assert len(got_theta) == len(ref_theta) == len(list(f.parameters()))
    for g, r, p in zip(got_theta, ref_theta, f.parameters()):
        assert g.shape == p.shape
        assert close(g, r)


def test_mlp_products_by_hand(device):
    """f(z) = W2 tanh(W1 z + b1) + b2 for one state: λ ∂f/∂z = ((λ W2) ⊙ (1 - h²)) W1."""
    f = MLP((3, 7, 3), dtype=F64).to(device)
    W1, b1, W2, b2 = f.net[0].weight, f.net[0].bias, f.net[2].weight, f.net[2].bias
    z = torch.randn(3, dtype=F64, device=device)
    lam = torch.randn(3, dtype=F64, device=device)
    vz, (vW1, vb1, vW2, vb2) = vjp_autograd(f, torch.tensor(0.0, dtype=F64), z, lam)
    with torch.no_grad():
        h = torch.tanh(W1 @ z + b1)
        mu = (lam @ W2) * (1 - h ** 2)  # the row vector that reaches the first layer
        assert close(vz, mu @ W1)
        assert close(vb2, lam)
        assert close(vW2, torch.outer(lam, h))
        assert close(vb1, mu)
        assert close(vW1, torch.outer(mu, z))


def test_jacobian_shapes_and_rows(device):
    f = MLP((4, 8, 4), dtype=F64).to(device)
    z = torch.randn(4, dtype=F64, device=device)
    t = torch.tensor(0.0, dtype=F64)
    J_z, J_theta = jacobians(f, t, z)
    assert J_z.shape == (4, 4)
    assert [J.shape for J in J_theta] == [(4, 8, 4), (4, 8), (4, 4, 8), (4, 4)]
    # row i of ∂f/∂z is the VJP with the i-th unit row vector
    for i in range(4):
        e = torch.zeros(4, dtype=F64, device=device)
        e[i] = 1.0
        assert close(J_z[i], vjp_autograd(f, t, z, e)[0])


def test_plain_callable_and_unused_parameters(device):
    """A callable without parameters gives an empty tuple; a module with a buffer only, too."""
    t = torch.tensor(0.0, dtype=F64)
    z = torch.randn(2, 2, dtype=F64, device=device)
    lam = torch.randn(2, 2, dtype=F64, device=device)
    for route in ROUTES:
        vz, vt = route(lambda t_, y: torch.sin(y), t, z, lam)
        assert vt == ()
        assert close(vz, lam * torch.cos(z))
        spiral = Spiral(dtype=F64).to(device)
        vz, vt = route(spiral, t, z, lam)
        assert vt == ()
        assert close(vz, (lam @ spiral.A.T) * 3 * z ** 2)


def test_matches_augmented_dynamics(device):
    """AugmentedDynamics returns [f, -λ ∂f/∂z, -λ ∂f/∂θ]: the same products with a minus sign."""
    f = MLP((3, 16, 3), dtype=F64).to(device)
    t = torch.tensor(0.1, dtype=F64, device=device)
    z = torch.randn(2, 3, dtype=F64, device=device)
    lam = torch.randn(2, 3, dtype=F64, device=device)
    params = tuple(f.parameters())
    dyn = AugmentedDynamics(f, z.shape, params)
    p = sum(x.numel() for x in params)
    state = torch.cat([z.reshape(-1), lam.reshape(-1), torch.zeros(p, dtype=F64, device=device)])
    dz, dlam, da = dyn.split(dyn(t, state))
    vz, vtheta = vjp_autograd(f, t, z, lam)
    assert close(dz, f(t, z).detach())
    assert close(dlam, -vz)
    assert close(da, -torch.cat([v.reshape(-1) for v in vtheta]))


def test_mismatched_shapes():
    f = MLP((2, 4, 2), dtype=F64)
    with pytest.raises(ValueError, match="shape"):
        vjp_autograd(f, torch.tensor(0.0), torch.zeros(2, dtype=F64), torch.zeros(3, dtype=F64))


def test_time_call():
    calls = []
    seconds = time_call(lambda: calls.append(1), repeats=3, min_time=1e-3, warmup=2)
    assert seconds > 0 and seconds < 1e-3
    assert len(calls) > 2 + 1 + 3  # warm-up, calibration and at least one call per repeat
    with pytest.raises(ValueError):
        time_call(lambda: None, repeats=0)


def test_time_calls_measures_the_functions_in_turns():
    order = []

    def mark(key, seconds):
        def fn():
            order.append(key)
            time.sleep(seconds)
        return fn

    t = time_calls({"short": mark("short", 1e-3), "long": mark("long", 4e-3)}, repeats=3,
                   min_time=0.0, warmup=0)
    assert 3.5e-3 < t["long"] < 0.1 and 0.5e-3 < t["short"] < t["long"] / 2
    # calibration (one call each), then the rounds alternate rather than run back to back
    assert order == ["short", "long"] + ["short", "long"] * 3
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        time_calls({"a": lambda: None}, repeats=0)
