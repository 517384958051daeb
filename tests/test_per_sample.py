"""Per-sample step sizes (options={"per_sample_steps": True}): values, steps, gradients, errors, stats.

Each sample of the batch must behave as if it were solved alone by the shared-step solver: the
same accepted steps, the same values, and (adjoint) the same contribution to the parameter
gradient. Closed forms come from a batch of linear problems dz/dt = -a k_i z, with k_i carried in
the state as a column with dk/dt = 0 so that the vector field treats rows independently.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import helpers
from helpers.models import MLP
from helpers.options import make_settings
from helpers.solve import integrate
from helpers.stats import StepCounter

F64 = torch.float64
PS = {"per_sample_steps": True}


class Decay(nn.Module):
    """dz/dt = -a k z, dk/dt = 0 on rows [z, k]; the scalar parameter ``a`` is learnable."""

    def __init__(self, a=1.0, dtype=F64, device=None):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=dtype, device=device))

    def forward(self, t, y):
        z, k = y[:, :1], y[:, 1:]
        return torch.cat([-self.a * k * z, torch.zeros_like(k)], 1)


class Damped(nn.Module):
    """An MLP on z plus a per-row linear damping -k z, k carried in the state: rows [z1, z2, k]."""

    def __init__(self, hidden=16, dtype=F64, device=None):
        super().__init__()
        self.mlp = MLP((2, hidden, 2), dtype=dtype, device=device)

    def forward(self, t, y):
        z, k = y[:, :2], y[:, 2:]
        return torch.cat([self.mlp(t, z) - k * z, torch.zeros_like(k)], 1)


class RowCounting(nn.Module):
    """Wraps a vector field; counts its calls and the rows it was called with."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.rows = 0

    def forward(self, t, y):
        self.calls += 1
        self.rows += y.shape[0]
        return self.inner(t, y)


# every adaptive FSAL method with dense output: the ones per-sample steps accept
PER_SAMPLE_METHODS = ["dopri5", "bosh3", "adaptive_heun", "fehlberg2"]
# the second-order pair takes thousands of steps at the tolerances the others use
LOOSE = {"adaptive_heun": (1e-3, 1e-5), "fehlberg2": (1e-3, 1e-5)}


def decay_batch(device, direction=1.0, stiff=60.0):
    """Rows [z0, k]; k has the sign of the direction of integration so every row decays."""
    z0 = torch.tensor([1.0, -2.0, 0.5, 3.0, 1.5], dtype=F64, device=device)
    k = direction * torch.tensor([0.3, 1.0, stiff, 2.0, 0.0], dtype=F64, device=device)  # row 2 is stiff
    return torch.stack([z0, k], 1)


def per_row_steps(func, y0, t, method, rtol, atol, options=PS):
    """Solve through the integration loop directly and return (ys, counter)."""
    settings = make_settings(method, rtol, atol, options)
    counter = StepCounter()
    ys = integrate(func, y0, t, settings, counter)
    return ys, counter


@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_linear_batch_matches_closed_form_and_steps_differ(device, method, direction):
    y0 = decay_batch(device, direction, stiff=200.0)
    t = direction * torch.tensor([0.0, 0.1, 0.7, 1.5, 2.0], dtype=F64, device=device)
    f = Decay(device=device)
    rtol = atol = 1e-7
    ys, counter = per_row_steps(f, y0, t, method, rtol, atol)
    exact = y0[:, 0] * torch.exp(-y0[:, 1] * (t - t[0])[:, None])
    assert torch.allclose(ys[..., 0], exact, rtol=200 * rtol, atol=200 * atol)
    assert torch.equal(ys[..., 1], y0[:, 1].expand(len(t), -1))  # dk/dt = 0 exactly
    assert torch.equal(ys[0], y0)
    steps = counter.sample_steps.tolist()
    # each row takes exactly the accepted steps of a shared solve of that row alone
    for i in range(len(y0)):
        alone = helpers.SolveStats()
        helpers.odeint(f, y0[i:i + 1], t, rtol=rtol, atol=atol, method=method, stats=alone)
        assert steps[i] == alone.steps_accepted_forward, (i, steps)
    easy = sorted(s for i, s in enumerate(steps) if i != 2)
    assert steps[2] > max(easy) and steps[2] > 3 * easy[len(easy) // 2]
    assert counter.accepted == sum(steps)


@pytest.mark.parametrize("method", PER_SAMPLE_METHODS)
def test_each_row_equals_its_shared_solve_alone(device, method):
    torch.manual_seed(1)
    f = Damped(device=device)
    k = torch.tensor([[0.0], [0.0], [25.0], [0.5], [0.0], [3.0]], dtype=F64, device=device)
    y0 = torch.cat([torch.randn(6, 2, dtype=F64, device=device), k], 1)
    t = torch.tensor([0.0, 0.4, 1.0, 2.0], dtype=F64, device=device)
    rtol, atol = LOOSE.get(method, (1e-6, 1e-8))
    with torch.no_grad():
        ys, counter = per_row_steps(f, y0, t, method, rtol, atol)
        for i in range(len(y0)):
            alone = helpers.SolveStats()
            y_i = helpers.odeint(f, y0[i:i + 1], t, rtol=rtol, atol=atol, method=method, stats=alone)
            assert int(counter.sample_steps[i]) == alone.steps_accepted_forward
            # same steps: only rounding separates them (batched matmuls round differently)
            assert torch.allclose(ys[:, i], y_i[:, 0], rtol=1e-10, atol=1e-12)


def decay_loss_and_grads(solve, f, y0, t, **kwargs):
    y0 = y0.clone().requires_grad_(True)
    ys = solve(f, y0, t, **kwargs)
    loss = (ys[1:, :, 0] ** 2).sum()
    gy0, ga = torch.autograd.grad(loss, (y0, f.a))
    return ys, gy0, ga


@pytest.mark.parametrize("solver", ["odeint", "odeint_adjoint"])
@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_gradients_match_closed_form(device, solver, direction):
    """L = Σ_j Σ_i z_i(t_j)², z_i(t) = z0_i exp(-a k_i (t - t0)): dL/dz0, dL/dk, dL/da in closed form."""
    y0 = decay_batch(device, direction)
    t = direction * torch.tensor([0.0, 0.5, 1.2, 2.0], dtype=F64, device=device)
    f = Decay(a=0.8, device=device)
    solve = getattr(helpers, solver)
    _, gy0, ga = decay_loss_and_grads(solve, f, y0, t, rtol=1e-10, atol=1e-12, options=PS)
    z0, k, a = y0[:, 0], y0[:, 1], 0.8
    dt = (t[1:] - t[0])[:, None]
    decay2 = torch.exp(-2 * a * k * dt)  # (times, rows)
    assert torch.allclose(gy0[:, 0], (2 * z0 * decay2).sum(0), rtol=1e-7, atol=1e-10)
    assert torch.allclose(gy0[:, 1], (-2 * a * dt * z0 ** 2 * decay2).sum(0), rtol=1e-7, atol=1e-10)
    assert torch.allclose(ga, (-2 * k * dt * z0 ** 2 * decay2).sum(), rtol=1e-7)


def mlp_grads(solve, f, y0, t, **kwargs):
    y0 = y0.clone().requires_grad_(True)
    ys = solve(f, y0, t, **kwargs)
    weights = torch.linspace(0.5, 1.5, ys[..., :2].numel(), dtype=ys.dtype, device=ys.device).view(ys[..., :2].shape)
    loss = (weights * ys[..., :2] ** 2).sum()
    return torch.autograd.grad(loss, (y0, *f.parameters()))


def assert_rel_close(got, want, tol):
    for g, w in zip(got, want):
        rel = float((g - w).norm() / w.norm().clamp(min=1e-30))
        assert rel < tol, rel


@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_mlp_gradients_against_shared_and_each_other(device, method, direction):
    torch.manual_seed(2)
    f = Damped(hidden=8, device=device)
    k = direction * torch.tensor([[0.0], [8.0], [0.3], [0.0]], dtype=F64, device=device)
    y0 = torch.cat([torch.randn(4, 2, dtype=F64, device=device), k], 1)
    t = direction * torch.tensor([0.0, 0.3, 0.8], dtype=F64, device=device)
    tol = 1e-10 if method == "dopri5" else 1e-9  # bosh3 is third order: 1e-10 costs seconds
    tight = dict(rtol=tol, atol=tol, method=method)
    reference = mlp_grads(helpers.odeint, f, y0, t, **tight)  # shared steps, backprop
    backprop = mlp_grads(helpers.odeint, f, y0, t, options=PS, **tight)
    adjoint = mlp_grads(helpers.odeint_adjoint, f, y0, t, options=PS, **tight)
    assert_rel_close(backprop, reference, 1000 * tol)
    assert_rel_close(adjoint, reference, 1000 * tol)
    assert_rel_close(adjoint, backprop, 1000 * tol)


@pytest.mark.parametrize("method", PER_SAMPLE_METHODS)
def test_adjoint_is_the_sum_of_each_rows_shared_adjoint(device, method):
    """At a loose tolerance, where discretisation errors are large, the per-sample adjoint still
    equals Σ_i (shared adjoint of row i alone) to rounding: every row takes its solo steps
    forward and backward, and a_θ receives exactly its terms (first_step=0.5 makes every
    interval start with rejected steps, so taking back rejected rows' terms is exercised)."""
    torch.manual_seed(3)
    f = Damped(hidden=8, device=device)
    k = torch.tensor([[0.0], [30.0], [1.0]], dtype=F64, device=device)
    y0 = torch.cat([torch.randn(3, 2, dtype=F64, device=device), k], 1)
    t = torch.tensor([0.0, 0.5, 1.5], dtype=F64, device=device)
    rtol, atol = LOOSE.get(method, (1e-4, 1e-6))
    kw = dict(rtol=rtol, atol=atol, method=method, adjoint_options={"first_step": 0.5})
    stats = helpers.SolveStats()
    together = mlp_grads(helpers.odeint_adjoint, f, y0, t, options=PS, stats=stats, **kw)
    total = None
    for i in range(len(y0)):
        g = mlp_grads_rows(f, y0, t, i, kw)
        total = g if total is None else [a + b for a, b in zip(total, g)]
    assert_rel_close(together, total, 1e-9)
    assert stats.steps_rejected_backward > 0


def mlp_grads_rows(f, y0, t, i, kw):
    """Gradients of row i's share of the loss of mlp_grads, from a shared adjoint solve of row i alone."""
    y0 = y0.clone().requires_grad_(True)
    ys = helpers.odeint_adjoint(f, y0[i:i + 1], t, **kw)
    full = torch.linspace(0.5, 1.5, len(t) * len(y0) * 2, dtype=y0.dtype, device=y0.device).view(len(t), len(y0), 2)
    loss = (full[:, i:i + 1] * ys[..., :2] ** 2).sum()
    return torch.autograd.grad(loss, (y0, *f.parameters()))


class Cubic(nn.Module):
    """dz/dt = -a z³ on rows [z, 0]: a huge first step overflows the stages to inf and nan."""

    def __init__(self, device=None):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(1.0, dtype=F64, device=device))

    def forward(self, t, y):
        z = y[:, :1]
        return torch.cat([-self.a * z ** 3, torch.zeros_like(z)], 1)


@pytest.mark.parametrize("solver", ["odeint", "odeint_adjoint"])
def test_a_row_that_overflows_a_trial_step_does_not_poison_the_others(device, solver):
    """Row 1's first trial step overflows (a rejected, non-finite step) while row 0 accepts;
    the gradients stay finite and equal the closed form z(t) = z0 / sqrt(1 + 2 a z0² t)."""
    f = Cubic(device=device)
    y0 = torch.tensor([[0.1, 0.0], [30.0, 0.0]], dtype=F64, device=device)
    t = torch.tensor([0.0, 1.0], dtype=F64, device=device)
    opts = dict(PS, first_step=20.0)
    kw = dict(rtol=1e-10, atol=1e-12, options=opts)
    if solver == "odeint_adjoint":
        kw["adjoint_options"] = dict(opts)
    y = y0.clone().requires_grad_(True)
    ys = getattr(helpers, solver)(f, y, t, **kw)
    gy, ga = torch.autograd.grad((ys[-1, :, 0] ** 2).sum(), (y, f.a))
    z0 = y0[:, 0]
    s = 1 + 2 * z0 ** 2  # a = 1, t = 1
    assert torch.allclose(ys[-1, :, 0], z0 / s.sqrt(), rtol=1e-8)
    assert torch.allclose(gy[:, 0], 2 * z0 / s ** 2, rtol=1e-6)
    assert torch.allclose(ga, (-2 * z0 ** 4 / s ** 2).sum(), rtol=1e-6)


def test_time_gradients_by_backprop_match_the_shared_solver(device):
    torch.manual_seed(4)
    f = Damped(hidden=8, device=device)
    k = torch.tensor([[0.0], [12.0], [0.5]], dtype=F64, device=device)
    y0 = torch.cat([torch.randn(3, 2, dtype=F64, device=device), k], 1)
    grads = []
    for options in (None, PS):
        t = torch.tensor([0.2, 0.6, 1.3], dtype=F64, device=device, requires_grad=True)
        ys = helpers.odeint(f, y0, t, rtol=1e-10, atol=1e-10, options=options)
        grads.append(torch.autograd.grad((ys[..., :2] ** 2).sum(), t)[0])
    assert torch.allclose(grads[1], grads[0], rtol=1e-7, atol=1e-9)
    assert bool((grads[0].abs() > 1e-3).all())


class TimeDependent(nn.Module):
    """dz/dt = -z + sin(t): a field that reads one time per row (t[:, None])."""

    def forward(self, t, y):
        return -y + torch.sin(t)[:, None]


def test_time_dependent_field_gets_one_time_per_row(device):
    y0 = torch.tensor([[1.0], [-1.0], [0.0]], dtype=F64, device=device)
    t = torch.tensor([0.0, 1.0, 3.0], dtype=F64, device=device)
    ys = helpers.odeint(TimeDependent(), y0, t, rtol=1e-10, atol=1e-12, options=PS)
    # z(t) = (z0 + 1/2) e^{-t} + (sin t - cos t) / 2
    tt = t[:, None]
    exact = (y0[:, 0] + 0.5) * torch.exp(-tt) + (torch.sin(tt) - torch.cos(tt)) / 2
    assert torch.allclose(ys[..., 0], exact, rtol=1e-8, atol=1e-10)


# ----------------------------------------------------------------------------------------------
# Errors


def test_errors_name_the_argument(device):
    f = Decay(device=device)
    t = torch.tensor([0.0, 1.0], dtype=F64, device=device)
    y0 = decay_batch(device)
    with pytest.raises(ValueError, match=r"options\['per_sample_steps'\].*at least 2 dimensions"):
        helpers.odeint(lambda t, y: -y, torch.ones(3, dtype=F64, device=device), t, options=PS)
    with pytest.raises(ValueError, match=r"adjoint_options\['per_sample_steps'\].*at least 2 dimensions"):
        helpers.odeint_adjoint(lambda t, y: -y, torch.ones(3, dtype=F64, device=device), t,
                               adjoint_options=PS)
    with pytest.raises(ValueError, match="unknown key.*per_sample_steps"):
        helpers.odeint(f, y0, t, method="rk4", options=PS)
    with pytest.raises(TypeError, match=r"options\['per_sample_steps'\] must be True or False"):
        helpers.odeint(f, y0, t, options={"per_sample_steps": 1})
    with pytest.raises(ValueError, match=r"adjoint_options\['norm'\]='full' cannot be combined"):
        helpers.odeint_adjoint(f, y0, t, options=PS, adjoint_options={"norm": "full"})
    # per-sample steps for the backward solve alone
    with pytest.raises(ValueError, match=r"adjoint_options\['norm'\]='full' cannot be combined"):
        helpers.odeint_adjoint(f, y0, t, adjoint_options={"norm": "full", "per_sample_steps": True})


def test_func_returning_the_wrong_shape_for_a_row_subset_is_caught(device):
    y0 = decay_batch(device)
    t = torch.tensor([0.0, 2.0], dtype=F64, device=device)
    decay = Decay(device=device)

    def whole_batch_only(t, y):
        # right for the whole batch, wrong once finished rows are left out
        return decay(t, y) if y.shape[0] == 5 else torch.zeros(5, 2, dtype=F64, device=device)

    with pytest.raises(ValueError, match=r"returned shape \(5, 2\) for y of shape \([1-4], 2\).*treating the samples"):
        helpers.odeint(whole_batch_only, y0, t, options=PS)
    with pytest.raises(TypeError, match="must return a tensor"):
        helpers.odeint(lambda t, y: (y,), y0, t, options=PS)
    with pytest.raises(ValueError, match="dtype"):
        helpers.odeint(lambda t, y: y.float(), y0, t, options=PS)


def test_solve_errors_name_the_sample(device):
    t = torch.tensor([0.0, 2.0], dtype=F64, device=device)
    y0 = torch.tensor([[0.5], [1.0], [0.2]], dtype=F64, device=device)
    # dz/dt = z²: row 1 (z0 = 1) blows up at t = 1
    with pytest.raises(helpers.SolveError, match=r"sample 1.*t=(0\.99|1)"):
        helpers.odeint(lambda t, y: y ** 2, y0, t, options=PS)
    y0 = decay_batch(device)
    with pytest.raises(helpers.SolveError, match=r"max_num_steps=20 .*sample 2 is at t="):
        helpers.odeint(Decay(device=device), y0, t, rtol=1e-10, atol=1e-12, options=dict(PS, max_num_steps=20))


# ----------------------------------------------------------------------------------------------
# Stats


def stiff_batch(device, batch=64, stiff=True):
    torch.manual_seed(5)
    k = torch.zeros(batch, 1, dtype=F64, device=device)
    if stiff:
        k[7] = 40.0
    return torch.cat([torch.randn(batch, 2, dtype=F64, device=device), k], 1)


def test_stats_count_sample_evaluations(device):
    f = RowCounting(Damped(hidden=8, device=device))
    t = torch.tensor([0.0, 3.0], dtype=F64, device=device)
    y0 = stiff_batch(device).requires_grad_(True)
    kw = dict(rtol=1e-6, atol=1e-6)

    shared = helpers.SolveStats()
    helpers.odeint(f, y0, t, stats=shared, **kw)
    assert not shared.per_sample_steps and "sample-evaluations" not in str(shared)

    f.calls = f.rows = 0
    stats = helpers.SolveStats()
    ys = helpers.odeint_adjoint(f, y0, t, options=PS, stats=stats, **kw)
    forward_calls, forward_rows = f.calls, f.rows
    ys[-1].pow(2).sum().backward()
    print(f"\nshared: {shared}\nper-sample adjoint: {stats}")
    assert stats.per_sample_steps
    assert stats.nfe_forward == forward_calls
    assert stats.sample_evals_forward == forward_rows
    assert stats.nfe_backward == f.calls - forward_calls
    assert stats.sample_evals_backward == f.rows - forward_rows
    # one stiff row among 64: far less work than 64 rows × the shared solve's NFE
    assert stats.sample_evals_forward < 0.2 * len(y0) * shared.nfe_forward
    assert stats.sample_steps_slowest_forward > 5 * stats.sample_steps_median_forward
    assert stats.sample_steps_slowest_backward > 5 * stats.sample_steps_median_backward
    text = str(stats)
    assert f"sample-evaluations forward {stats.sample_evals_forward}" in text
    assert f"slowest {stats.sample_steps_slowest_forward}" in text


def test_easy_rows_take_about_their_baseline_steps(device):
    """Without the stiff row, and with it: the median sample's steps do not change."""
    f = Damped(hidden=8, device=device)
    t = torch.tensor([0.0, 3.0], dtype=F64, device=device)
    counts = []
    for stiff in (False, True):
        with torch.no_grad():
            _, counter = per_row_steps(f, stiff_batch(device, stiff=stiff), t, "dopri5", 1e-6, 1e-6)
        counts.append(counter.sample_steps)
    easy = torch.ones(64, dtype=torch.bool)
    easy[7] = False
    assert torch.equal(counts[0][easy], counts[1][easy])
    assert int(counts[1][7]) > 5 * int(counts[0].max())
