"""Tuple states: y0 a tuple of tensors and func returning a tuple, as in torchdiffeq.

The problem is shaped like a continuous normalising flow: a batch of samples z and the change
of their log-density, d(log p)/dt = -tr(∂f/∂z). Every output and gradient (each member of y0,
t, the parameters) is checked against torchdiffeq and against the same problem written as one
concatenated tensor.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import helpers

torchdiffeq = pytest.importorskip("torchdiffeq")

F64 = torch.float64
TIGHT = dict(rtol=1e-10, atol=1e-12)
SOLVERS = {"odeint": helpers.odeint, "odeint_adjoint": helpers.odeint_adjoint}


class Flow(nn.Module):
    """dz/dt = tanh(z W + b t), d(log p)/dt = -tr(∂(dz/dt)/∂z), in closed form for this field."""

    def __init__(self):
        super().__init__()
        self.W = nn.Parameter(0.5 * torch.randn(2, 2, dtype=F64))
        self.b = nn.Parameter(0.3 * torch.randn(2, dtype=F64))

    def field(self, t, z):
        pre = z @ self.W + self.b * t
        dz = torch.tanh(pre)
        # ∂dz_j/∂z_j = (1 - tanh²) W_jj, summed over j
        trace = ((1 - dz ** 2) * torch.diagonal(self.W)).sum(dim=-1, keepdim=True)
        return dz, -trace

    def forward(self, t, state):
        z, logp = state
        return self.field(t, z)


class FlatFlow(nn.Module):
    """The same field on one tensor [z, log p] of shape (batch, 3)."""

    def __init__(self, flow):
        super().__init__()
        self.flow = flow

    def forward(self, t, y):
        dz, dlogp = self.flow.field(t, y[..., :2])
        return torch.cat([dz, dlogp], dim=-1)


def make_inputs():
    z0 = torch.randn(5, 2, dtype=F64)
    logp0 = torch.randn(5, 1, dtype=F64)
    t = torch.tensor([0.0, 0.4, 0.9, 1.5], dtype=F64)
    wz, wp = torch.randn(4, 5, 2, dtype=F64), torch.randn(4, 5, 1, dtype=F64)
    return z0, logp0, t, wz, wp


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def solve_tuple(odeint, flow, z0, logp0, t, wz, wp, **kwargs):
    z0, logp0 = z0.clone().requires_grad_(True), logp0.clone().requires_grad_(True)
    t = t.clone().requires_grad_(True)
    zs, logps = odeint(flow, (z0, logp0), t, **TIGHT, **kwargs)
    inputs = [z0, logp0, t] + list(flow.parameters())
    grads = torch.autograd.grad((wz * zs).sum() + (wp * logps).sum(), inputs)
    return (zs.detach(), logps.detach()), grads


@pytest.mark.parametrize("mode", sorted(SOLVERS))
@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_tuple_state_matches_torchdiffeq_and_flat(mode, method):
    flow = Flow()
    z0, logp0, t, wz, wp = make_inputs()
    options = dict(step_size=0.05) if method == "rk4" else None
    (zs, logps), grads = solve_tuple(SOLVERS[mode], flow, z0, logp0, t, wz, wp, method=method, options=options)
    assert zs.shape == (4, 5, 2) and logps.shape == (4, 5, 1)
    assert torch.equal(zs[0], z0) and torch.equal(logps[0], logp0)

    # the same problem as one tensor (batch, 3) in helpers
    y0 = torch.cat([z0, logp0], dim=-1).requires_grad_(True)
    t_flat = t.clone().requires_grad_(True)
    ys = SOLVERS[mode](FlatFlow(flow), y0, t_flat, method=method, options=options, **TIGHT)
    w = torch.cat([wz, wp], dim=-1)
    g_flat = torch.autograd.grad((w * ys).sum(), [y0, t_flat] + list(flow.parameters()))
    assert (zs - ys[..., :2].detach()).abs().max().item() < 1e-12
    assert (logps - ys[..., 2:].detach()).abs().max().item() < 1e-12
    flat = [g_flat[0][..., :2], g_flat[0][..., 2:], *g_flat[1:]]
    names = ["z0", "logp0", "t", "W", "b"]
    for name, g, gf in zip(names, grads, flat):
        assert rel(g, gf) < 1e-10, name

    # torchdiffeq on the tuple itself; its fixed grid gives no usable gradient for t (see
    # test_compat_inputs), so t is compared on the adaptive method only
    (zs_d, logps_d), grads_d = solve_tuple(getattr(torchdiffeq, mode), flow, z0, logp0, t, wz, wp,
                                           method=method, options=options)
    # torchdiffeq's rk4 is the 3/8-rule variant, helpers' the classical one: O(h^5) apart
    tol_out = 1e-8 if method == "dopri5" else 1e-7
    assert (zs - zs_d).abs().max().item() < tol_out
    assert (logps - logps_d).abs().max().item() < tol_out
    for name, g, g_d in zip(names, grads, grads_d):
        if name == "t" and method == "rk4" and mode == "odeint":
            continue
        assert rel(g, g_d) < 1e-6, name


def test_tuple_state_with_plain_function_and_adjoint_params():
    """A plain function closing over w: refused without adjoint_params, right with them."""
    w = torch.tensor(0.6, dtype=F64, requires_grad=True)

    def f(t, state):
        a, b = state
        return -w * a, a.sum() * torch.ones_like(b)  # b' = sum(a)

    a0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    b0 = torch.tensor(0.5, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(ValueError, match=r"'w'.*adjoint_params=\[w\]"):
        helpers.odeint_adjoint(f, (a0, b0), t)
    a_s, b_s = helpers.odeint_adjoint(f, (a0, b0), t, adjoint_params=[w], **TIGHT)
    assert a_s.shape == (2, 2) and b_s.shape == (2,)
    # b(1) = b0 + sum(a0) (1 - e^{-w}) / w; L = b(1)
    b_s[-1].backward()
    e = torch.exp(-w.detach())
    assert abs(b_s[-1].item() - (0.5 + 3.0 * (1 - e) / 0.6)) < 1e-9
    exact_dw = 3.0 * ((0.6 * e) - (1 - e)) / 0.6 ** 2
    assert abs(w.grad.item() - exact_dw) < 1e-8
    assert (a0.grad - (1 - e) / 0.6).abs().max().item() < 1e-9
    assert abs(b0.grad.item() - 1.0) < 1e-12


@pytest.mark.parametrize("mode", sorted(SOLVERS))
def test_tuple_state_single_time_and_float64_times(mode):
    flow = Flow().float()
    z0, logp0 = torch.randn(3, 2).requires_grad_(True), torch.zeros(3, 1)
    zs, logps = SOLVERS[mode](flow, (z0, logp0), torch.tensor([0.3], dtype=F64))
    assert torch.equal(zs[0], z0.detach()) and torch.equal(logps[0], logp0)
    zs, logps = SOLVERS[mode](flow, (z0, logp0), torch.tensor([0.0, 1.0], dtype=F64))
    assert zs.dtype == logps.dtype == torch.float32


@pytest.mark.parametrize("mode", sorted(SOLVERS))
@pytest.mark.parametrize("y0,func,exc,match", [
    ((), lambda t, s: s, ValueError, "y0 is an empty tuple"),
    ((torch.ones(2), torch.ones(2, dtype=F64)), lambda t, s: s, TypeError, "must share one dtype"),
    ((torch.ones(2), torch.ones(2, device="meta")), lambda t, s: s, ValueError, "must be on one device"),
    ((torch.ones(2), [1.0]), lambda t, s: s, TypeError, r"y0\[1\] must be a torch.Tensor"),
    ((torch.ones(2), torch.ones(1, dtype=torch.int64)), lambda t, s: s, TypeError, r"y0\[1\] must be a real floating"),
    ((torch.ones(2), torch.ones(1)), lambda t, s: torch.ones(3), TypeError, "must return a tuple of 2 tensors"),
    ((torch.ones(2), torch.ones(1)), lambda t, s: (s[0],), ValueError, "returned 1"),
    ((torch.ones(2), torch.ones(1)), lambda t, s: (s[0], s[0]), ValueError, r"func\(t, y\)\[1\] has shape \(2,\) but y0\[1\] has shape \(1,\)"),
    ((torch.ones(2), torch.ones(1)), lambda t, s: (s[0], s[1].double()), ValueError, r"func\(t, y\)\[1\] has dtype torch.float64"),
    ((torch.ones(2), torch.ones(1)), "not callable", TypeError, "func must be callable"),
], ids=["empty", "dtypes", "devices", "not-tensor", "int", "not-tuple", "length", "shape", "out-dtype", "func"])
def test_bad_tuple_states(mode, y0, func, exc, match):
    with pytest.raises(exc, match=match):
        SOLVERS[mode](func, y0, torch.tensor([0.0, 1.0]))


def test_per_sample_steps_refused_for_tuples():
    with pytest.raises(ValueError, match=r"per_sample_steps'\] needs y0 to be one tensor"):
        helpers.odeint(lambda t, s: s, (torch.ones(3, 2), torch.ones(3, 1)), torch.tensor([0.0, 1.0]),
                       options=dict(per_sample_steps=True))


@pytest.mark.parametrize("mode", sorted(SOLVERS))
def test_callable_norm_receives_a_tuple(mode):
    """options['norm'] sees the scaled error as a tuple shaped like y0, as in torchdiffeq."""
    seen = set()

    def tuple_norm(error):
        seen.add(tuple(tuple(e.shape) for e in error))
        return (sum(e.pow(2).sum() for e in error) / 3).sqrt()

    def flat_norm(error):
        return (error.pow(2).sum() / 3).sqrt()

    y0 = (torch.tensor(1.0, dtype=F64), torch.ones(2, dtype=F64))
    t = torch.tensor([0.0, 1.0], dtype=F64)
    a, b = SOLVERS[mode](lambda s, x: (x[0], -x[1]), y0, t, options=dict(norm=tuple_norm))
    assert seen == {((), (2,))}
    ys = SOLVERS[mode](lambda s, x: torch.cat([x[:1], -x[1:]]), torch.ones(3, dtype=F64), t,
                       options=dict(norm=flat_norm))
    assert abs(a[-1].item() - ys[-1, 0].item()) < 1e-12
    assert (b[-1] - ys[-1, 1:]).abs().max().item() < 1e-12
