"""helpers against torchdiffeq (a test dependency) on a neural ODE: the same outputs and gradients.

Both solvers run dopri5 at rtol=1e-10, atol=1e-12 but choose their steps differently, so they
agree to about their tolerances, not bit for bit: outputs to 1e-8, gradients to 1e-6 relative.
The fixed-step methods whose formulas coincide (euler, midpoint) agree to rounding.
"""
from __future__ import annotations

import os

import pytest
import torch

import helpers
from helpers.models import MLP

if os.environ.get("CI"):
    # a pinned test dependency (requirements.txt): under CI its absence fails the run, never skips
    import torchdiffeq
else:
    torchdiffeq = pytest.importorskip(
        "torchdiffeq", reason="torchdiffeq, a test dependency pinned in requirements.txt, is not installed")

F64 = torch.float64
TIGHT = dict(rtol=1e-10, atol=1e-12)


def rel_err(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


def setup(device):
    f = MLP((2, 32, 32, 2), dtype=F64, device=device)
    y0 = torch.randn(6, 2, dtype=F64).to(device)
    t = torch.tensor([0.0, 0.3, 0.75, 1.2, 2.0], dtype=F64, device=device)
    w = torch.randn(5, 6, 2, dtype=F64).to(device)
    return f, y0, t, w


def outputs_and_grads(odeint, f, y0, t, w, **kwargs):
    y0 = y0.detach().clone().requires_grad_(True)
    t = t.detach().clone().requires_grad_(True)
    params = list(f.parameters())
    ys = odeint(f, y0, t, method="dopri5", **kwargs)
    grads = torch.autograd.grad((w * ys).sum(), [y0, t] + params)
    return ys.detach(), grads


@pytest.mark.parametrize("mode", ["odeint", "odeint_adjoint"])
def test_neural_ode_matches_torchdiffeq(device, mode):
    f, y0, t, w = setup(device)
    ys_h, g_h = outputs_and_grads(getattr(helpers, mode), f, y0, t, w, **TIGHT)
    ys_d, g_d = outputs_and_grads(getattr(torchdiffeq, mode), f, y0, t, w, **TIGHT)
    out_err = (ys_h - ys_d).abs().max().item()
    names = ["y0", "t"] + [n for n, _ in f.named_parameters()]
    errs = {n: rel_err(a, b) for n, a, b in zip(names, g_h, g_d)}
    print(f"\n{mode}: max output difference {out_err:.1e}; gradient relative differences "
          + ", ".join(f"{n} {e:.1e}" for n, e in errs.items()))
    assert ys_h.shape == ys_d.shape
    assert out_err < 1e-8
    for n, e in errs.items():
        assert e < 1e-6, f"gradient with respect to {n} differs from torchdiffeq by {e:.1e}"


def test_helpers_adjoint_matches_torchdiffeq_backprop(device):
    f, y0, t, w = setup(device)
    _, g_h = outputs_and_grads(helpers.odeint_adjoint, f, y0, t, w, **TIGHT)
    _, g_d = outputs_and_grads(torchdiffeq.odeint, f, y0, t, w, **TIGHT)
    for a, b in zip(g_h, g_d):
        assert rel_err(a, b) < 1e-6


def test_backward_in_time_matches_torchdiffeq(device):
    f, y0, t, w = setup(device)
    t = -t.flip(0) + 0.5  # strictly decreasing
    for mode in ("odeint", "odeint_adjoint"):
        ys_h, g_h = outputs_and_grads(getattr(helpers, mode), f, y0, t, w, **TIGHT)
        ys_d, g_d = outputs_and_grads(getattr(torchdiffeq, mode), f, y0, t, w, **TIGHT)
        assert (ys_h - ys_d).abs().max().item() < 1e-8
        for a, b in zip(g_h, g_d):
            assert rel_err(a, b) < 1e-6


@pytest.mark.parametrize("method", ["euler", "midpoint"])
def test_fixed_step_methods_match_torchdiffeq_exactly(device, method):
    """With every output time on the step grid, the same formula gives the same numbers."""
    f, y0, _, w = setup(device)
    t = torch.linspace(0.0, 1.0, 11, dtype=F64, device=device)
    ys_h = helpers.odeint(f, y0, t, method=method, options=dict(step_size=0.1))
    ys_d = torchdiffeq.odeint(f, y0, t, method=method, options=dict(step_size=0.1))
    assert (ys_h - ys_d).abs().max().item() < 1e-12


def test_plain_function_adjoint(device):
    """torchdiffeq's adjoint refuses a plain callable; helpers' gives gradients for y0 and t."""
    def f(s, z):  # no parameters
        return -0.5 * z + torch.sin(s) * z.flip(-1)

    y0 = torch.tensor([1.0, -0.4], dtype=F64, device=device)
    t = torch.tensor([0.0, 0.6, 1.3], dtype=F64, device=device)
    w = torch.randn(3, 2, dtype=F64).to(device)

    with pytest.raises(ValueError, match="nn.Module"):
        torchdiffeq.odeint_adjoint(f, y0, t)

    y0_h = y0.clone().requires_grad_(True)
    t_h = t.clone().requires_grad_(True)
    ys = helpers.odeint_adjoint(f, y0_h, t_h, **TIGHT)
    (w * ys).sum().backward()
    assert y0_h.grad is not None and t_h.grad is not None

    # the same gradients as torchdiffeq (told explicitly that there are no parameters) ...
    y0_d = y0.clone().requires_grad_(True)
    t_d = t.clone().requires_grad_(True)
    (w * torchdiffeq.odeint_adjoint(f, y0_d, t_d, adjoint_params=(), **TIGHT)).sum().backward()
    assert rel_err(y0_h.grad, y0_d.grad) < 1e-6
    assert rel_err(t_h.grad, t_d.grad) < 1e-6
    # ... and as backpropagating through helpers.odeint
    y0_b = y0.clone().requires_grad_(True)
    t_b = t.clone().requires_grad_(True)
    (w * helpers.odeint(f, y0_b, t_b, **TIGHT)).sum().backward()
    assert rel_err(y0_h.grad, y0_b.grad) < 1e-6
    assert rel_err(t_h.grad, t_b.grad) < 1e-6
