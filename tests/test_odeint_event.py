"""helpers.odeint_event and odeint(..., event_fn=...): the public interface to events.

Checked against the closed form of dz/dt = -k z reaching z = c (t* = t0 + ln(z0 / c) / k),
against torchdiffeq's odeint_event, and against finite differences on a nonlinear problem
(a projectile with quadratic drag landing), through both odeint and odeint_adjoint.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import helpers

torchdiffeq = pytest.importorskip("torchdiffeq")

F64 = torch.float64
TIGHT = dict(rtol=1e-10, atol=1e-12)
INTERFACES = ["odeint", "odeint_adjoint"]


class Decay(nn.Module):
    def __init__(self, k=0.7):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(k, dtype=F64))

    def forward(self, t, z):
        return -self.k * z


def decay_inputs():
    z0 = torch.tensor([2.0], dtype=F64, requires_grad=True)
    c = torch.tensor(0.5, dtype=F64, requires_grad=True)
    t0 = torch.tensor(0.3, dtype=F64, requires_grad=True)
    return z0, c, t0


@pytest.mark.parametrize("interface", INTERFACES)
@pytest.mark.parametrize("method,options,tol", [("dopri5", None, 1e-8), ("rk4", dict(step_size=0.01), 1e-8)])
def test_event_time_closed_form(interface, method, options, tol):
    f = Decay()
    z0, c, t0 = decay_inputs()
    event_t, solution = helpers.odeint_event(f, z0, t0, event_fn=lambda t, z: z.sum() - c,
                                             odeint_interface=getattr(helpers, interface),
                                             method=method, options=options, **TIGHT)
    k = f.k.detach()
    exact = 0.3 + math.log(4.0) / 0.7
    assert solution.shape == (2, 1)
    assert abs(event_t.item() - exact) < tol
    assert torch.equal(solution[0], z0.detach())
    assert abs(solution[-1, 0].item() - 0.5) < tol
    grads = torch.autograd.grad(event_t, [f.k, z0, c, t0], retain_graph=True)
    want = [-math.log(4.0) / k.item() ** 2, 1 / (k.item() * 2.0), -1 / (k.item() * 0.5), 1.0]
    for name, g, w in zip(["k", "z0", "c", "t0"], grads, want):
        assert abs(g.item() - w) < tol * 10 * max(1.0, abs(w)), (name, g.item(), w)
    # z(t*) = c whatever k, z0 and t0 are: its gradient includes f(t*, z*) dt*/dθ
    grads = torch.autograd.grad(solution[-1, 0], [f.k, z0, c, t0])
    for name, g, w in zip(["k", "z0", "c", "t0"], grads, [0.0, 0.0, 1.0, 0.0]):
        assert abs(g.item() - w) < tol * 10, (name, g.item(), w)


@pytest.mark.parametrize("interface", INTERFACES)
def test_matches_torchdiffeq(interface):
    results = {}
    for module in (helpers, torchdiffeq):
        f = Decay()
        z0, _, t0 = decay_inputs()
        event_t, solution = module.odeint_event(f, z0, t0, event_fn=lambda t, z: z.sum() - 0.5,
                                                odeint_interface=getattr(module, interface), **TIGHT)
        grads = torch.autograd.grad(event_t + solution[-1].sum(), [f.k, z0, t0])
        results[module.__name__] = (event_t.detach(), solution.detach(), grads)
    (t_h, s_h, g_h), (t_d, s_d, g_d) = results["helpers"], results["torchdiffeq"]
    assert abs(t_h.item() - t_d.item()) < 1e-8
    assert (s_h - s_d).abs().max().item() < 1e-8
    for a, b in zip(g_h, g_d):
        assert abs(a.item() - b.item()) < 1e-6 * max(1.0, abs(b.item()))


class Projectile(nn.Module):
    """(x, y, vx, vy)' = (vx, vy, -b |v| vx, -g - b |v| vy): no closed form for the landing."""

    def __init__(self, b=0.3):
        super().__init__()
        self.b = nn.Parameter(torch.tensor(b, dtype=F64))

    def forward(self, t, s):
        v = s[2:]
        drag = -self.b * v.norm() * v
        return torch.cat([v, drag + torch.tensor([0.0, -9.81], dtype=F64)])


def landing(b, s0, interface="odeint"):
    f = Projectile(b)
    event_t, solution = helpers.odeint_event(f, s0, torch.tensor(0.0, dtype=F64),
                                             event_fn=lambda t, s: s[1], odeint_interface=getattr(helpers, interface),
                                             **TIGHT)
    return f, event_t, solution


@pytest.mark.parametrize("interface", INTERFACES)
def test_landing_gradients_match_finite_differences(interface):
    s0 = torch.tensor([0.0, 1.0, 6.0, 8.0], dtype=F64, requires_grad=True)
    f, event_t, solution = landing(0.3, s0, interface)
    distance = solution[-1, 0]  # where it lands
    g_t = torch.autograd.grad(event_t, [f.b, s0], retain_graph=True)
    g_x = torch.autograd.grad(distance, [f.b, s0])
    eps = 1e-5

    def both(b, s):
        with torch.no_grad():
            _, t_e, sol = landing(b, s)
        return t_e.item(), sol[-1, 0].item()

    fd_b = [(p - m) / (2 * eps) for p, m in zip(both(0.3 + eps, s0.detach()), both(0.3 - eps, s0.detach()))]
    assert abs(g_t[0].item() - fd_b[0]) < 1e-6 * max(1.0, abs(fd_b[0]))
    assert abs(g_x[0].item() - fd_b[1]) < 1e-6 * max(1.0, abs(fd_b[1]))
    assert abs(g_x[1][0].item() - 1.0) < 1e-12 and g_t[1][0].item() == 0.0  # the start x only shifts x
    for i in (1, 2, 3):
        e = torch.zeros(4, dtype=F64)
        e[i] = eps
        fd = [(p - m) / (2 * eps) for p, m in zip(both(0.3, s0.detach() + e), both(0.3, s0.detach() - e))]
        assert abs(g_t[1][i].item() - fd[0]) < 1e-6 * max(1.0, abs(fd[0])), i
        assert abs(g_x[1][i].item() - fd[1]) < 1e-6 * max(1.0, abs(fd[1])), i


def test_reverse_time_and_the_event_fn_argument_of_odeint():
    f = Decay(-0.7)  # grows forward, so going back it decays to z = c
    z0, c, t0 = decay_inputs()
    event_t, solution = helpers.odeint_event(f, z0, t0, event_fn=lambda t, z: z.sum() - c,
                                             reverse_time=True, **TIGHT)
    assert abs(event_t.item() - (0.3 - math.log(4.0) / 0.7)) < 1e-8
    # the same through odeint's own event_fn argument, t[1] giving the direction
    t = torch.stack([t0, t0.detach() - 1])
    event_t2, solution2 = helpers.odeint(f, z0, t, event_fn=lambda s, z: z.sum() - c, **TIGHT)
    assert event_t2.item() == event_t.item() and torch.equal(solution2, solution)


@pytest.mark.parametrize("interface", INTERFACES)
def test_tuple_state_event(interface):
    """(position, velocity) as a tuple; the event is the position reaching 0 under z'' = -z."""
    w = nn.Parameter(torch.tensor(1.5, dtype=F64))

    class Oscillator(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = w

        def forward(self, t, state):
            x, v = state
            return v, -self.w ** 2 * x

    x0 = torch.tensor(1.0, dtype=F64, requires_grad=True)
    v0 = torch.tensor(0.0, dtype=F64)
    event_t, (xs, vs) = helpers.odeint_event(Oscillator(), (x0, v0), torch.tensor(0.0, dtype=F64),
                                             event_fn=lambda t, s: s[0],
                                             odeint_interface=getattr(helpers, interface), **TIGHT)
    # x = cos(w t): the first zero is at pi / (2 w), where v = -w
    assert abs(event_t.item() - math.pi / 3.0) < 1e-8
    assert xs.shape == vs.shape == (2,)
    assert abs(vs[-1].item() + 1.5) < 1e-8
    (g_w,) = torch.autograd.grad(event_t, [w])
    assert abs(g_w.item() + math.pi / (2 * 1.5 ** 2)) < 1e-7


def test_event_errors():
    f = Decay()
    y0, t = torch.tensor([2.0], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(TypeError, match="event_fn must be callable"):
        helpers.odeint(f, y0, t, event_fn="z = 1")
    with pytest.raises(ValueError, match="compiled=True cannot be combined with event_fn"):
        helpers.odeint(f, y0, t, event_fn=lambda s, z: z.sum() - 1, compiled=True)
    with pytest.raises(ValueError, match="already zero"):
        helpers.odeint_event(f, y0, t[0], event_fn=lambda s, z: z.sum() - 2.0)
