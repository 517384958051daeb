"""Tests built to fail on realistic bugs that the rest of the suite let through.

Each test runs its feature on a problem where getting the feature wrong changes the answer by far
more than the tolerance asserted (a time-dependent field for checkpoints and time gradients, a
loss that reads z(t0), a solve that really rejects steps, a strongly dissipative system for the
re-anchoring of z), or checks a documented behaviour exactly (max_num_steps inherited by the
backward solve, the per-sample median, the starting-step probe of a backward-in-time solve, the
fixed-step counts, dtype and device of outputs and gradients). The comment above each test names
the class of planted bug it catches; every one was checked to fail with that bug planted in a
scratch copy of helpers.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import helpers
from helpers.problems import LinearODE, TimeDependentODE
from helpers.time_gradients import time_gradients

F64 = torch.float64
TIGHT = dict(rtol=1e-10, atol=1e-12)


def rel_max(actual, expected) -> float:
    """Largest elementwise error relative to the largest entry of ``expected``."""
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def grads_of(solve, f, y0, t, w, **kwargs):
    """The solution and the gradients of Σ w ⊙ ys with respect to (y0, t, *f.parameters())."""
    y0 = y0.detach().clone().requires_grad_(True)
    t = t.detach().clone().requires_grad_(True)
    ys = solve(f, y0, t, **kwargs)
    return ys.detach(), torch.autograd.grad((w * ys).sum(), [y0, t, *f.parameters()])


def exact_grads(f, y0, t, w):
    return grads_of(lambda func, y, s: func.exact(y, s), f, y0, t, w)


# --- checkpoints and time gradients on a field that depends on t --------------------------------


# Catches: with adjoint_options=dict(checkpoints=K), dL/dt_i (or z's re-anchoring) read at a
# grid position instead of the requested time's position; invisible on autonomous fields, where
# f does not depend on where in time it is evaluated. Measured: errors at most 3e-10 relative.
@pytest.mark.parametrize("checkpoints", [1, 3, 7])
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_checkpoints_on_time_dependent_field(device, checkpoints, direction):
    f = TimeDependentODE(a=-0.3, b=0.8, dtype=F64).to(device)
    y0 = torch.tensor([1.0, -0.5, 2.0], dtype=F64, device=device)
    times = [0.0, 0.3, 1.0, 2.5]
    t = torch.tensor(times if direction == "forward" else times[::-1], dtype=F64, device=device)
    w = torch.randn(len(t), 3, dtype=F64).to(device)
    stats = helpers.SolveStats()
    ys, grads = grads_of(helpers.odeint_adjoint, f, y0, t, w, adjoint_options=dict(checkpoints=checkpoints),
                         stats=stats, **TIGHT)
    ys_exact, exact = exact_grads(f, y0, t, w)
    assert rel_max(ys, ys_exact) < 1e-9
    for name, g, ge in zip(["y0", "t", "a", "b"], grads, exact):
        assert rel_max(g, ge) < 3e-9, name
    # every time gets a gradient far from zero, so a wrong one cannot hide
    assert (exact[1].abs() > 1e-2).all()


# Catches: dL/dt0 that forgets to remove the jump ∂L/∂z(t0) from λ(t0) (z(t0) = y0 does not move
# with t0), in odeint_adjoint, with and without checkpoints; only a loss that reads z(t0) shows
# it. Measured: t.grad within 3e-11 of the exact gradient.
@pytest.mark.parametrize("checkpoints", [0, 4])
def test_adjoint_dt0_with_loss_reading_z_t0(device, checkpoints):
    f = TimeDependentODE(a=-0.3, b=0.8, dtype=F64).to(device)
    y0 = torch.tensor([1.0, -2.0], dtype=F64, device=device)
    t = torch.tensor([0.5, 1.2, 3.0], dtype=F64, device=device)
    w = torch.zeros(3, 2, dtype=F64, device=device)
    w[0] = torch.tensor([3.0, -1.0])   # the loss reads z(t0) = y0 heavily ...
    w[2] = torch.tensor([0.2, 0.3])    # ... and z(t_N)
    _, grads = grads_of(helpers.odeint_adjoint, f, y0, t, w, adjoint_options=dict(checkpoints=checkpoints), **TIGHT)
    _, exact = exact_grads(f, y0, t, w)
    # dL/dt0 differs from -λ(t0)·f(y0, t0) by (w[0]·f(y0, t0)), large here
    f0 = f(t[0], y0).detach()
    assert abs((w[0] * f0).sum().item()) > 0.5 * exact[1].abs().max().item()
    assert rel_max(grads[1], exact[1]) < 1e-9
    assert rel_max(grads[0], exact[0]) < 1e-9


# Catches: time_gradients' boundary form using λ(t0) with the jump ∂L/∂z(t0) included, or its a_t
# channel dropping by the direct term at t0 too; only a loss that reads z(t0) shows either.
# Measured: both forms within 2e-11 of the exact gradient.
def test_time_gradients_dt0_with_loss_reading_z_t0(device):
    f = TimeDependentODE(a=-0.3, b=0.8, dtype=F64).to(device)
    z0 = torch.tensor([1.0, -2.0], dtype=F64, device=device)
    times = [0.5, 1.2, 3.0]
    target = torch.tensor([0.4, -0.3], dtype=F64, device=device)

    def loss_fn(zs):
        return 2.0 * ((zs[0] - target) ** 2).sum() + 0.5 * (zs[-1] ** 2).sum() + zs[1, 0]

    t_exact = torch.tensor(times, dtype=F64, device=device, requires_grad=True)
    (g_exact,) = torch.autograd.grad(loss_fn(f.exact(z0, t_exact)), t_exact)
    t = torch.tensor(times, dtype=F64, device=device)
    with torch.no_grad():
        zs = helpers.odeint(f, z0, t, **TIGHT)
    zs.requires_grad_(True)
    (grad_zs,) = torch.autograd.grad(loss_fn(zs), zs)
    out = time_gradients(f, t, zs.detach(), grad_zs, **TIGHT)
    direct0 = out.direct[0].item()   # ∂L/∂z(t0)·f(z0, t0): must stay out of dL/dt0
    assert abs(direct0) > 0.5 * abs(g_exact[0].item())
    assert abs(out.dLdt[0].item() - g_exact[0].item()) < 1e-9 * g_exact.abs().max().item()
    assert abs(out.dLdt0_boundary.item() - g_exact[0].item()) < 1e-9 * g_exact.abs().max().item()
    assert rel_max(out.dLdt, g_exact) < 1e-9


# --- accuracy where steps really are rejected ------------------------------------------------


class Pulse(nn.Module):
    """dz/dt = (a + b exp(-((t - c)/w)²)) z: quiet, then a sharp pulse that forces rejected steps.

    Solution: z0 exp(G(t) - G(t0)), G(u) = a u + b w √π/2 erf((u - c)/w).
    """

    def __init__(self, a=-0.5, b=4.0, c=1.3, w=0.05):
        super().__init__()
        self.a, self.b, self.c, self.w = a, b, c, w

    def forward(self, t, z):
        return (self.a + self.b * torch.exp(-(((t - self.c) / self.w) ** 2))) * z

    def exact(self, z0, t):
        def G(u):
            return self.a * u + self.b * self.w * math.sqrt(math.pi) / 2 * torch.erf((u - self.c) / self.w)
        return torch.stack([z0 * torch.exp(G(ti) - G(t[0])) for ti in t])


# Catches: an adaptive loop that accepts every step (or keeps a rejected step's state); a smooth
# problem at a moderate tolerance rejects nothing, so only a problem with real rejections shows
# it. Measured errors / tolerance: see PULSE_ERROR.
PULSE_ERROR = {("dopri5", 1e-6): 1.5, ("dopri5", 1e-8): 0.31, ("bosh3", 1e-6): 2.1, ("bosh3", 1e-8): 2.0}


@pytest.mark.parametrize("method,tol", sorted(PULSE_ERROR))
def test_accuracy_where_steps_are_rejected(device, method, tol):
    f = Pulse()
    y0 = torch.tensor([1.0, -0.5], dtype=F64, device=device)
    t = torch.linspace(0.0, 3.0, 7, dtype=F64, device=device)
    stats = helpers.SolveStats()
    with torch.no_grad():
        ys = helpers.odeint(f, y0, t, method=method, rtol=tol, atol=tol, stats=stats)
        err = (ys - f.exact(y0, t)).abs().max().item()
    print(f"\n{method} tol {tol:g}: error {err:.2e} ({err / tol:.2f} × tol); {stats}")
    assert stats.steps_rejected_forward > 0
    assert err < 5 * PULSE_ERROR[method, tol] * tol


# --- re-anchoring of z on a strongly dissipative system ---------------------------------------


# Catches: a backward solve that re-anchors z to the stored forward state only at t_N and then
# carries its own backward reconstruction of z through the observation times. On dz/dt = A z with
# a fast decaying mode (eigenvalue -10) next to a growing one (+0.5), integrating z backward
# amplifies its errors by e^(10·Δt), e^20 over the whole span, so without re-anchoring dL/dA is
# wrong by orders of magnitude. Measured with re-anchoring: within 3.5e-10 of the exact gradients.
@pytest.mark.parametrize("method,options", [("dopri5", None), ("rk4", dict(step_size=0.002))])
def test_reanchoring_on_strongly_dissipative_system(device, method, options):
    P = torch.tensor([[1.0, 0.4], [-0.3, 1.0]], dtype=F64)
    A = P @ torch.diag(torch.tensor([-10.0, 0.5], dtype=F64)) @ torch.linalg.inv(P)
    f = LinearODE(A.to(device))
    y0 = torch.tensor([1.0, -1.0], dtype=F64, device=device)
    t = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0], dtype=F64, device=device)
    w = torch.randn(len(t), 2, dtype=F64).to(device)
    w[-1] = 0.0  # the observation times before t_N carry the loss, so the backward z must be right there
    kwargs = dict(TIGHT) if options is None else dict(method=method, options=options)
    _, grads = grads_of(helpers.odeint_adjoint, f, y0, t, w, **kwargs)
    _, exact = exact_grads(f, y0, t, w)
    for name, g, ge in zip(["y0", "t", "A"], grads, exact):
        assert rel_max(g, ge) < 2e-9, name


# --- documented behaviour, checked exactly ------------------------------------------------------


# Catches: the backward solve not inheriting options['max_num_steps'] (odeint_adjoint's docs: when
# the backward method is the forward one, step_size and max_num_steps default to the forward
# values). Measured: the forward solve takes 59 step attempts, the backward one at
# adjoint_rtol=1e-10 takes 329, so max_num_steps=100 must stop the backward solve only.
def test_backward_solve_inherits_max_num_steps(device):
    f = LinearODE(torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=F64, device=device))
    y0 = torch.tensor([1.0, 0.0], dtype=F64, device=device, requires_grad=True)
    t = torch.tensor([0.0, 5.0], dtype=F64, device=device)
    kw = dict(rtol=1e-6, atol=1e-8, adjoint_rtol=1e-10, adjoint_atol=1e-12)
    stats = helpers.SolveStats()
    ys = helpers.odeint_adjoint(f, y0, t, options=dict(max_num_steps=100), stats=stats, **kw)
    assert stats.steps_accepted_forward + stats.steps_rejected_forward <= 100  # the forward solve fits
    with pytest.raises(helpers.SolveError, match="max_num_steps=100"):
        ys[-1].sum().backward()
    assert stats.steps_accepted_backward + stats.steps_rejected_backward == 100
    # the backward solve's own max_num_steps overrides the inherited one
    stats = helpers.SolveStats()
    ys = helpers.odeint_adjoint(f, y0, t, options=dict(max_num_steps=100),
                                adjoint_options=dict(max_num_steps=1000), stats=stats, **kw)
    ys[-1].sum().backward()
    assert 100 < stats.steps_accepted_backward + stats.steps_rejected_backward < 1000


class Decay(nn.Module):
    """dz/dt = -a k z, dk/dt = 0 on rows [z, k]: each row its own linear problem."""

    def __init__(self, a=0.8, device=None):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=F64, device=device))

    def forward(self, t, y):
        z, k = y[:, :1], y[:, 1:]
        return torch.cat([-self.a * k * z, torch.zeros_like(k)], 1)


# Catches: a wrong per-sample median statistic (the upper median, the mean, a median of the wrong
# side's counts). Each row with per_sample_steps takes the accepted steps of that row solved
# alone, so the median is computed here from per-row solves: an even batch of 6 rows whose
# sorted forward counts were 6, 8, 21, 54, 67, 76 (lower median 21, upper 54, mean 38.7).
def test_per_sample_median_and_slowest_from_per_row_solves(device):
    f = Decay(device=device)
    k = torch.tensor([0.0, 0.5, 2.0, 6.0, 15.0, 40.0], dtype=F64, device=device)
    z0 = torch.tensor([1.0, -2.0, 0.5, 3.0, 1.5, -1.0], dtype=F64, device=device)
    y0 = torch.stack([z0, k], 1)
    t = torch.tensor([0.0, 0.5, 2.0], dtype=F64, device=device)
    kw = dict(rtol=1e-7, atol=1e-9)

    def loss(ys):
        return (ys[1:, :, 0] ** 2).sum()

    stats = helpers.SolveStats()
    loss(helpers.odeint_adjoint(f, y0.clone().requires_grad_(True), t, options=dict(per_sample_steps=True),
                                stats=stats, **kw)).backward()
    forward, backward = [], []
    for i in range(len(y0)):
        alone = helpers.SolveStats()
        loss(helpers.odeint_adjoint(f, y0[i:i + 1].clone().requires_grad_(True), t, stats=alone, **kw)).backward()
        forward.append(alone.steps_accepted_forward)
        backward.append(alone.steps_accepted_backward)
    print(f"\nper-row accepted steps forward {forward}, backward {backward}; {stats}")
    for counts, side in [(forward, "forward"), (backward, "backward")]:
        ordered = sorted(counts)
        lower_median = ordered[(len(ordered) - 1) // 2]
        assert len(set(counts)) == len(counts) and ordered[3] - ordered[2] >= 2  # the medians differ
        assert getattr(stats, f"sample_steps_median_{side}") == lower_median
        assert getattr(stats, f"sample_steps_slowest_{side}") == ordered[-1]
        assert getattr(stats, f"steps_accepted_{side}") == sum(counts)


# Catches: a starting-step probe that ignores the direction of integration (probing at t0 + h0
# or from y0 + h0·f0 when t decreases): the solve still converges, so only an exact comparison
# shows it. A backward-in-time solve of f must be the forward solve of g(s, y) = -f(-s, y) over
# s = -t, mirrored: negation is exact in floating point, so every step and value agree bit for bit.
@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_backward_in_time_solve_mirrors_forward_solve(device, method):
    f = TimeDependentODE(a=-0.3, b=2.0, dtype=F64).to(device)

    def g(s, y):
        return -f(-s, y)

    y0 = torch.tensor([1.0, -0.5], dtype=F64, device=device)
    t = torch.tensor([2.0, 1.3, 0.4, -0.5], dtype=F64, device=device)
    back, fwd = helpers.SolveStats(), helpers.SolveStats()
    with torch.no_grad():
        ys_back = helpers.odeint(f, y0, t, method=method, rtol=1e-6, atol=1e-8, stats=back)
        ys_fwd = helpers.odeint(g, y0, -t, method=method, rtol=1e-6, atol=1e-8, stats=fwd)
    assert torch.equal(ys_back, ys_fwd)
    assert (back.nfe_forward, back.steps_accepted_forward, back.steps_rejected_forward) == \
        (fwd.nfe_forward, fwd.steps_accepted_forward, fwd.steps_rejected_forward)
    assert back.steps_accepted_forward > 5


# Catches: fixed-step solvers that cut an interval into the wrong number of steps (round or
# floor+1 instead of ceil, a count from the whole span) or miscount NFE. Counts by hand, for
# step_size 0.1 on t = [0, 0.35, 1, 1.13]: ceil(3.5) = 4, ceil(6.5) = 7, ceil(1.3) = 2, so 13
# steps; for step_size 0.25 on t = [0, 0.5, 1]: exactly 2 + 2 = 4 (no extra step when the
# interval is a whole number of steps); an interval shorter than the step takes one step.
FIXED_CASES = [
    ([0.0, 0.35, 1.0, 1.13], 0.1, [4, 7, 2]),
    ([0.0, 0.5, 1.0], 0.25, [2, 2]),
    ([0.0, 0.05, 0.3], 0.1, [1, 3]),
]


@pytest.mark.parametrize("method,stages", [("euler", 1), ("midpoint", 2), ("rk4", 4)])
@pytest.mark.parametrize("case", range(len(FIXED_CASES)))
@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_fixed_step_counts_by_hand(device, method, stages, case, direction):
    times, step_size, per_interval = FIXED_CASES[case]
    t = direction * torch.tensor(times, dtype=F64, device=device)
    f = LinearODE(torch.tensor([[-0.1, 1.0], [-1.0, -0.1]], dtype=F64, device=device))
    calls = []

    def func(s, y):
        calls.append(float(s))
        return f(s, y)

    steps = sum(per_interval)
    stats = helpers.SolveStats()
    helpers.odeint(func, torch.tensor([1.0, 0.5], dtype=F64, device=device), t, method=method,
                   options=dict(step_size=step_size), stats=stats)
    assert (stats.steps_accepted_forward, stats.steps_rejected_forward) == (steps, 0)
    assert stats.nfe_forward == stages * steps
    # the first stage of every step is at the step's start: t_i + j (t_{i+1} - t_i)/n_i
    starts = [a + j * (b - a) / n for a, b, n in zip(t.tolist(), t.tolist()[1:], per_interval) for j in range(n)]
    assert len(calls) == stages * steps
    assert calls[::stages] == pytest.approx(starts, abs=1e-14)

    # the adjoint's backward solve takes the same steps, one evaluation per stage and per time
    stats = helpers.SolveStats()
    y0 = torch.tensor([1.0, 0.5], dtype=F64, device=device, requires_grad=True)
    tg = t.clone().requires_grad_(True)
    helpers.odeint_adjoint(f, y0, tg, method=method, options=dict(step_size=step_size), stats=stats).sum().backward()
    assert (stats.steps_accepted_backward, stats.steps_rejected_backward) == (steps, 0)
    assert stats.nfe_backward == stages * steps + len(t)


# --- dtype and device of outputs and gradients, on the CPU too -----------------------------------


class RowTimeDependent(TimeDependentODE):
    """TimeDependentODE that also takes one time per row (per_sample_steps calls it so)."""

    def forward(self, t, z):
        if t.dim() == 1:
            t = t.reshape(-1, *([1] * (z.dim() - 1)))
        return (self.a + self.b * torch.cos(t)) * z


DTYPE_CONFIGS = {
    "odeint-dopri5": (helpers.odeint, dict()),
    "odeint-rk4": (helpers.odeint, dict(method="rk4", options=dict(step_size=0.01))),
    "adjoint-dopri5": (helpers.odeint_adjoint, dict()),
    "adjoint-rk4": (helpers.odeint_adjoint, dict(method="rk4", options=dict(step_size=0.01))),
    "adjoint-checkpoints": (helpers.odeint_adjoint, dict(adjoint_options=dict(checkpoints=2))),
    "adjoint-full-norm": (helpers.odeint_adjoint, dict(adjoint_options=dict(norm="full"))),
    "adjoint-per-sample": (helpers.odeint_adjoint, dict(options=dict(per_sample_steps=True))),
}


# Catches: a tensor made with torch's default dtype (or device) instead of y0's inside a solve or a
# backward pass (the adjoint's a_θ or dL/dt buffer, a step size, a stage): the default dtype is
# set to the *other* float type here, so such a tensor would change the dtype of an output or
# round a float64 gradient to float32 (autograd then casts it back silently: only the accuracy,
# 2e-9 relative here, shows it). Measured errors against the exact gradients: float64 at most
# 3.7e-10, float32 at most 2.9e-6, except dL/dt by backpropagation through dopri5 (2.6e-8 in
# float64, 1.4e-4 in float32).
@pytest.mark.parametrize("config", sorted(DTYPE_CONFIGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_outputs_and_gradients_keep_dtype_and_device(config, dtype):
    solve, kwargs = DTYPE_CONFIGS[config]
    device = torch.device("cpu")
    torch.set_default_dtype(torch.float64 if dtype == torch.float32 else torch.float32)  # restored by conftest
    f = RowTimeDependent(a=-0.3, b=0.8, dtype=dtype).to(device)
    y0 = torch.tensor([[1.0, -0.5], [0.3, 2.0], [-1.2, 0.4]], dtype=dtype, device=device, requires_grad=True)
    t = torch.tensor([0.0, 0.6, 1.5], dtype=dtype, device=device, requires_grad=True)
    w = torch.randn(3, 3, 2, dtype=F64).to(dtype)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == F64 else dict(rtol=1e-6, atol=1e-7)
    if kwargs.get("method") is None:
        kwargs = {**tol, **kwargs}
    ys = solve(f, y0, t, **kwargs)
    params = [f.a, f.b]
    grads = torch.autograd.grad((w * ys).sum(), [y0, t, *params])
    assert ys.dtype == dtype and ys.device == device and ys.shape == (3, 3, 2)
    for name, x, g in zip(["y0", "t", "a", "b"], [y0, t, *params], grads):
        assert g.dtype == x.dtype == dtype and g.device == device and g.shape == x.shape, name
    # against the exact solution and gradients, in float64
    f64 = RowTimeDependent(a=-0.3, b=0.8, dtype=F64)
    y64, t64 = y0.detach().double().requires_grad_(True), t.detach().double().requires_grad_(True)
    ys64 = f64.exact(y64, t64)
    exact = torch.autograd.grad((w.double() * ys64).sum(), [y64, t64, f64.a, f64.b])
    errors = [rel_max(ys.detach().double(), ys64.detach())] + [rel_max(g.double(), ge) for g, ge in zip(grads, exact)]
    print(f"\n{config} {dtype}: errors of ys, y0, t, a, b: " + ", ".join(f"{e:.1e}" for e in errors))
    for name, e in zip(["ys", "y0", "t", "a", "b"], errors):
        # backpropagating through dopri5's step control gives t a less accurate gradient
        loose = config == "odeint-dopri5" and name == "t"
        bound = (1e-7 if loose else 2e-9) if dtype == F64 else (1e-3 if loose else 1e-5)
        assert e < bound, name


# Catches: a seminorm that leaves λ out of the backward solve's step control along with a_θ
# (error_numel = n instead of 2n). Starting at the equilibrium z = 0 of dz/dt = A z, z stays 0 and
# only λ moves (dλ/dt = -Aᵀλ), so a norm on z alone lets the steps grow unchecked. dL/dy0 =
# λ(t0) = exp(Aᵀ(t1 - t0)) w exactly. Measured at rtol 1e-8: within 2.0e-8 (seminorm) and 2.9e-8
# (full norm) of it; with λ left out, 4.8e3 off.
@pytest.mark.parametrize("norm", ["seminorm", "full"])
def test_adjoint_step_control_watches_lambda(device, norm):
    A = torch.tensor([[-0.5, 3.0], [-3.0, -0.5]], dtype=F64, device=device)
    f = LinearODE(A)
    y0 = torch.zeros(2, dtype=F64, device=device, requires_grad=True)
    t = torch.tensor([0.0, 4.0], dtype=F64, device=device)
    w = torch.tensor([1.0, -2.0], dtype=F64, device=device)
    stats = helpers.SolveStats()
    ys = helpers.odeint_adjoint(f, y0, t, rtol=1e-8, atol=1e-10, adjoint_options=dict(norm=norm), stats=stats)
    (g,) = torch.autograd.grad((w * ys[-1]).sum(), [y0])
    exact = torch.linalg.matrix_exp(A.T * 4.0) @ w
    print(f"\n{norm}: dL/dy0 error {rel_max(g, exact):.1e}; {stats}")
    assert rel_max(g, exact) < 1e-7
