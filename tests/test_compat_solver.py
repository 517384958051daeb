"""The solver loops against torchdiffeq's conventions: exact fixed-step counts, clear failures when
``func`` returns nan or inf, and the options a torchdiffeq user passes."""
from __future__ import annotations

import math

import pytest
import torch

import helpers
from helpers.solve import step_counts

torchdiffeq = pytest.importorskip("torchdiffeq")

F32, F64 = torch.float32, torch.float64


def max_err(a, b) -> float:
    return (a - b).abs().max().item()


# --- 1. fixed steps counted exactly ----------------------------------------------------------


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("method", ["euler", "midpoint"])
def test_fixed_step_count_is_exact(device, dtype, method):
    """0.05 cuts each interval of linspace(0, 1, 11) into 2 steps in float32 too (not 3)."""
    t = torch.linspace(0.0, 1.0, 11, dtype=dtype, device=device)
    y0 = torch.tensor([1.0, -0.5], dtype=dtype, device=device)

    def f(s, y):
        return -y + torch.sin(3 * s)

    stats = helpers.SolveStats()
    ys = helpers.odeint(f, y0, t, method=method, options=dict(step_size=0.05), stats=stats)
    assert stats.steps_accepted_forward == 20
    # every requested time is on torchdiffeq's grid t0 + k h: the same steps, equal to rounding
    ys_d = torchdiffeq.odeint(f, y0, t, method=method, options=dict(step_size=0.05))
    tol = 1e-6 if dtype == F32 else 1e-13
    assert max_err(ys, ys_d) < tol


def test_step_counts_rounding():
    f32 = torch.finfo(F32).eps
    f64 = torch.finfo(F64).eps
    t32 = torch.linspace(0.0, 1.0, 11, dtype=F32).tolist()
    assert t32[1] != 0.1  # 0.10000000149...: the float32 interval is not 0.1
    assert step_counts(t32, 0.05, f32) == [2] * 10
    assert step_counts(torch.linspace(0, 1, 11, dtype=F64).tolist(), 0.05, f64) == [2] * 10
    # not a whole number of steps: the ceiling, so no step exceeds step_size
    assert step_counts([0.0, 0.5, 1.0], 0.3, f64) == [2, 2]
    assert step_counts([0.0, 0.3 + 1e-9], 0.1, f64) == [4]
    # far from the origin the times' own rounding is larger, and still absorbed
    t_far = torch.tensor([1000.0, 1000.5], dtype=F32).tolist()
    assert step_counts(t_far, 0.1, f32) == [5]
    # an interval shorter than step_size is one step; backward intervals count the same
    assert step_counts([0.0, 0.01], 0.05, f64) == [1]
    assert step_counts([1.0, 0.0], 0.25, f64) == [4]


# --- 2. func returning nan or inf -------------------------------------------------------------


def _nan_after_half(s, y):
    return torch.where(s > 0.5, torch.full_like(y, float("nan")), -y)


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "rk4"])
def test_func_nan_at_first_evaluation(device, method):
    y0 = torch.tensor([1.0, 2.0], dtype=F64, device=device)
    t = torch.tensor([0.25, 2.0], dtype=F64, device=device)
    with pytest.raises(helpers.SolveError, match=r"func returned a non-finite value .* initial time t=0.25"):
        helpers.odeint(lambda s, y: y * float("nan"), y0, t, method=method, options=dict(step_size=0.1)
                       if method == "rk4" else None)
    assert helpers.last_stats().nfe_forward <= 1  # at once, not after 10,000 rejected steps


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "adaptive_heun", "fehlberg2", "dopri8"])
def test_func_nan_in_a_stage_adaptive(device, method):
    """nan from t > 0.5 on: reported within a few tries, at t just past 0.5."""
    y0 = torch.tensor([1.0, 2.0], dtype=F64, device=device)
    t = torch.tensor([0.0, 2.0], dtype=F64, device=device)
    with pytest.raises(helpers.SolveError, match="func returned a non-finite value") as info:
        helpers.odeint(_nan_after_half, y0, t, method=method)
    t_bad = float(str(info.value).split(" at t=")[1].split(" ")[0])
    assert 0.5 < t_bad < 0.51
    st = helpers.last_stats()
    print(f"\n{method}: {info.value}\n({st.steps_accepted_forward} accepted, {st.steps_rejected_forward} rejected)")
    assert st.steps_rejected_forward <= helpers.solve.NONFINITE_TRIES + 2


def test_func_nan_in_a_stage_fixed(device):
    y0 = torch.tensor([1.0, 2.0], dtype=F64, device=device)
    t = torch.tensor([0.0, 1.0, 2.0], dtype=F64, device=device)
    with pytest.raises(helpers.SolveError, match=r"func returned a non-finite value .* at t=0.55 .* from t=0.5"):
        helpers.odeint(_nan_after_half, y0, t, method="rk4", options=dict(step_size=0.1))


@pytest.mark.parametrize("method,options", [("dopri5", None), ("rk4", dict(step_size=0.1))])
def test_blow_up_is_not_blamed_on_func(device, method, options):
    """y' = y², y(0) = 1 blows up at t = 1: the state grows, func is fine."""
    y0 = torch.ones(2, dtype=F64, device=device)
    t = torch.tensor([0.0, 2.0], dtype=F64, device=device)
    with pytest.raises(helpers.SolveError) as info:
        helpers.odeint(lambda s, y: y ** 2, y0, t, method=method, options=options)
    message = str(info.value)
    assert "func returned" not in message
    assert "blows up" in message or "singular" in message


def test_leaving_the_domain_in_a_trial_step_still_solves(device):
    """y' = -sqrt(y): a too-long trial step goes below 0 (nan); shorter ones recover."""
    y0 = torch.ones(2, dtype=F64, device=device)
    t = torch.tensor([0.0, 1.999], dtype=F64, device=device)
    ys = helpers.odeint(lambda s, y: -torch.sqrt(y), y0, t, rtol=1e-9, atol=1e-12)
    assert max_err(ys[-1], torch.full_like(y0, (1 - 1.999 / 2) ** 2)) < 1e-8


# --- 4. the options a torchdiffeq user passes ----------------------------------------------


class Recorder(torch.nn.Module):
    """A vector field with torchdiffeq's step callbacks, recording (t0, dt) of each call."""

    def __init__(self, f):
        super().__init__()
        self.f = f
        self.log = {"step": [], "accept": [], "reject": []}

    def forward(self, t, y):
        return self.f(t, y)

    def callback_step(self, t0, y0, dt):
        self.log["step"].append((float(t0), float(dt)))

    def callback_accept_step(self, t0, y0, dt):
        self.log["accept"].append((float(t0), float(dt)))

    def callback_reject_step(self, t0, y0, dt):
        self.log["reject"].append((float(t0), float(dt)))


def spiral(s, y):
    return torch.stack([-0.1 * y[0] + y[1], -y[0] - 0.1 * y[1]]) + torch.sin(s)


Y0 = [1.0, 0.0]


def test_callbacks_adaptive():
    f = Recorder(spiral)
    y0 = torch.tensor(Y0, dtype=F64)
    t = torch.tensor([0.0, 3.0], dtype=F64)
    stats = helpers.SolveStats()
    helpers.odeint(f, y0, t, rtol=1e-8, atol=1e-8, options=dict(first_step=2.0), stats=stats)
    assert len(f.log["accept"]) == stats.steps_accepted_forward > 0
    assert len(f.log["reject"]) == stats.steps_rejected_forward > 0  # the huge first step
    assert len(f.log["step"]) == len(f.log["accept"]) + len(f.log["reject"])
    # accepted steps tile [0, 3]
    assert f.log["accept"][0][0] == 0.0
    assert sum(dt for _, dt in f.log["accept"]) == pytest.approx(3.0, abs=1e-12)
    # torchdiffeq calls the same callbacks in the same pattern
    g = Recorder(spiral)
    torchdiffeq.odeint(g, y0, t, rtol=1e-8, atol=1e-8, options=dict(first_step=2.0))
    assert len(g.log["step"]) == len(g.log["accept"]) + len(g.log["reject"])
    assert g.log["reject"][0] == f.log["reject"][0] == (0.0, 2.0)


def test_callbacks_fixed_match_torchdiffeq():
    y0 = torch.tensor(Y0, dtype=F64)
    t = torch.linspace(0.0, 1.0, 6, dtype=F64)
    f, g = Recorder(spiral), Recorder(spiral)
    # a fixed-step method accepts every step: both warn that the accept/reject callbacks are unused
    with pytest.warns(UserWarning, match="callback_accept_step"):
        helpers.odeint(f, y0, t, method="rk4", options=dict(step_size=0.1))
    with pytest.warns(UserWarning, match="callback"):
        torchdiffeq.odeint(g, y0, t, method="rk4", options=dict(step_size=0.1))
    assert len(f.log["step"]) == len(g.log["step"]) == 10
    for (a, da), (b, db) in zip(f.log["step"], g.log["step"]):
        assert a == pytest.approx(b, abs=1e-12) and da == pytest.approx(db, abs=1e-12)
    assert not f.log["accept"] and not f.log["reject"]
    assert not g.log["accept"] and not g.log["reject"]


def test_adjoint_callbacks_are_called_backward():
    class WithAdjointCallback(Recorder):
        def callback_step_adjoint(self, t0, y0, dt):
            self.log.setdefault("adjoint", []).append((float(t0), float(dt), y0.numel()))

    f = WithAdjointCallback(spiral)
    y0 = torch.tensor(Y0, dtype=F64, requires_grad=True)
    ys = helpers.odeint_adjoint(f, y0, torch.tensor([0.0, 1.0], dtype=F64), adjoint_params=())
    assert "adjoint" not in f.log  # not during the forward solve
    ys.sum().backward()
    back = f.log["adjoint"]
    # the backward solve runs from 1 to 0 on the augmented state [z, lambda]
    assert back[0][0] == 1.0 and all(dt < 0 and n == 4 for _, dt, n in back)


@pytest.mark.parametrize("key", ["max_step", "min_step"])
def test_min_and_max_step(key):
    y0 = torch.tensor(Y0, dtype=F64)
    t = torch.tensor([0.0, 2.0], dtype=F64)
    f = Recorder(spiral)
    exact = torchdiffeq.odeint(spiral, y0, t, method="dopri8", rtol=1e-13, atol=1e-13)
    if key == "max_step":
        ys = helpers.odeint(f, y0, t, rtol=1e-6, atol=1e-6, options=dict(max_step=0.05))
        assert max(abs(dt) for _, dt in f.log["step"]) <= 0.05 + 1e-15
        assert len(f.log["accept"]) >= 40
        assert max_err(ys, exact) < 1e-7
        g = Recorder(spiral)
        torchdiffeq.odeint(g, y0, t, rtol=1e-6, atol=1e-6, options=dict(max_step=0.05))
        assert max(abs(dt) for _, dt in g.log["step"]) <= 0.05 + 1e-15
    else:
        # a step of at least 0.5 is taken and accepted whatever its error estimate says
        ys = helpers.odeint(f, y0, t, rtol=1e-12, atol=1e-12, options=dict(min_step=0.5))
        assert all(abs(dt) >= 0.5 - 1e-12 for _, dt in f.log["accept"][:-1])
        assert len(f.log["accept"]) <= 4 and not f.log["reject"]
        assert 1e-10 < max_err(ys, exact) < 1e-3  # far from the tolerance: the steps were forced


def test_min_step_above_max_step_is_refused():
    with pytest.raises(ValueError, match="min_step <= max_step"):
        helpers.odeint(spiral, torch.tensor(Y0), torch.tensor([0.0, 1.0]), options=dict(min_step=1.0, max_step=0.1))


def test_callable_norm():
    """The norm sees the scaled error, as in torchdiffeq: a max norm is stricter than the RMS."""
    y0 = torch.tensor(Y0, dtype=F64)
    t = torch.linspace(0.0, 4.0, 5, dtype=F64)
    seen = []

    def max_norm(x):
        seen.append(x.shape)
        return x.abs().max()

    stats_rms, stats_max = helpers.SolveStats(), helpers.SolveStats()
    ys_rms = helpers.odeint(spiral, y0, t, rtol=1e-6, atol=1e-6, stats=stats_rms)
    ys_max = helpers.odeint(spiral, y0, t, rtol=1e-6, atol=1e-6, options=dict(norm=max_norm), stats=stats_max)
    assert seen and all(s == y0.shape for s in seen)
    assert stats_max.steps_accepted_forward >= stats_rms.steps_accepted_forward
    ys_d = torchdiffeq.odeint(spiral, y0, t, rtol=1e-6, atol=1e-6, options=dict(norm=lambda x: x.abs().max()))
    assert max_err(ys_max, ys_d) < 1e-5
    # a norm that says every error is zero: steps grow by max_factor and are all accepted
    stats = helpers.SolveStats()
    helpers.odeint(spiral, y0, t, options=dict(norm=lambda x: x.sum() * 0, first_step=0.01), stats=stats)
    assert stats.steps_rejected_forward == 0 and stats.steps_accepted_forward <= 5
    with pytest.raises(ValueError, match="must be a callable"):
        helpers.odeint(spiral, y0, t, options=dict(norm="seminorm"))


def _step_function(s, y):
    """dy/dt = 1 before t = 0.5 and -2 from it on: y is piecewise linear, with a kink at 0.5."""
    return torch.where(s < 0.5, torch.ones_like(y), -2 * torch.ones_like(y))


@pytest.mark.parametrize("key", ["jump_t", "step_t", "grid_points"])
def test_steps_end_on_listed_times(key):
    y0 = torch.zeros(1, dtype=F64)
    t = torch.tensor([0.0, 0.8, 1.0], dtype=F64)
    exact = torch.tensor([[0.0], [0.5 - 0.6], [0.5 - 1.0]], dtype=F64)
    plain = helpers.SolveStats()
    ys_plain = helpers.odeint(_step_function, y0, t, rtol=1e-9, atol=1e-9, stats=plain)
    f = Recorder(_step_function)
    stats = helpers.SolveStats()
    ys = helpers.odeint(f, y0, t, rtol=1e-9, atol=1e-9, options={key: torch.tensor([0.5], dtype=F64)}, stats=stats)
    ends = [t0 + dt for t0, dt in f.log["accept"]]
    assert 0.5 in ends  # a step ends exactly on the listed time
    print(f"\n{key}: error {max_err(ys, exact):.1e} with {stats.steps_rejected_forward} rejections; "
          f"without it {max_err(ys_plain, exact):.1e} with {plain.steps_rejected_forward}")
    if key == "jump_t":
        # each stage sees f from its own side of the jump: f is constant in every step, so exact
        assert max_err(ys, exact) < 1e-13
        assert stats.steps_rejected_forward < plain.steps_rejected_forward
    else:
        # the step ending at 0.5 evaluates f at 0.5 itself, past the jump: only to the tolerance
        assert max_err(ys, exact) < 1e-8
    if key != "grid_points":  # torchdiffeq 0.2.5 names them step_t and jump_t
        ys_d = torchdiffeq.odeint(_step_function, y0, t, rtol=1e-9, atol=1e-9,
                                  options={key: torch.tensor([0.5], dtype=F64)})
        print(f"torchdiffeq: error {max_err(ys_d, exact):.1e}")
        assert max_err(ys, ys_d) < 1e-6


def test_jump_t_evaluates_each_side():
    """At a jump, the stage at the step's end sees f before the jump, the next step f after."""
    calls = []

    def f(s, y):
        calls.append(float(s))
        return _step_function(s, y)

    helpers.odeint(f, torch.zeros(1, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64),
                   options=dict(jump_t=[0.5], first_step=0.3))
    assert math.nextafter(0.5, 0.0) in calls and math.nextafter(0.5, 1.0) in calls


def test_jump_t_backward_in_time():
    y0 = torch.tensor([0.5 - 1.0], dtype=F64)
    t = torch.tensor([1.0, 0.0], dtype=F64)
    ys = helpers.odeint(_step_function, y0, t, rtol=1e-9, atol=1e-9, options=dict(jump_t=[0.5]))
    assert abs(ys[-1].item()) < 1e-13


def test_grid_constructor():
    y0 = torch.tensor(Y0, dtype=F64)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)

    def grid(func, y0, t):
        return torch.linspace(float(t[0]), float(t[-1]), 11, dtype=t.dtype)

    stats = helpers.SolveStats()
    ys = helpers.odeint(spiral, y0, t, method="euler", options=dict(grid_constructor=grid), stats=stats)
    assert stats.steps_accepted_forward == 10
    ys_d = torchdiffeq.odeint(spiral, y0, t, method="euler", options=dict(grid_constructor=grid))
    assert max_err(ys, ys_d) < 1e-13
    # a requested time off the grid is stepped onto (torchdiffeq interpolates linearly there)
    t_off = torch.tensor([0.0, 0.25, 1.0], dtype=F64)
    helpers.odeint(spiral, y0, t_off, method="euler", options=dict(grid_constructor=grid), stats=stats)
    assert stats.steps_accepted_forward == 10 + 11
    with pytest.raises(ValueError, match="grid from t\\[0\\]"):
        helpers.odeint(spiral, y0, t, method="euler", options=dict(grid_constructor=lambda f, y, s: s[1:]))
    with pytest.raises(ValueError, match="exclude each other"):
        helpers.odeint(spiral, y0, t, method="euler", options=dict(grid_constructor=grid, step_size=0.1))


@pytest.mark.parametrize("method", ["euler", "heun2", "rk4"])
def test_perturb(method):
    """f jumps at t = 0.5 (1 up to and at 0.5, 0 after). With perturb the step from 0.5 sees 0."""
    def f(s, y):
        return torch.where(s <= 0.5, torch.ones_like(y), torch.zeros_like(y))

    y0 = torch.zeros(1, dtype=F64)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    plain = helpers.odeint(f, y0, t, method=method)
    nudged = helpers.odeint(f, y0, t, method=method, options=dict(perturb=True))
    assert nudged[-1].item() == pytest.approx(0.5, abs=1e-12)
    assert plain[-1].item() > 0.5  # without it the step from 0.5 starts on the wrong side
    ys_d = torchdiffeq.odeint(f, y0, t, method=method, options=dict(perturb=True))
    assert max_err(nudged, ys_d) < 1e-12


@pytest.mark.parametrize("options,match", [
    (dict(perturb=True), "unknown key"),  # adaptive methods always perturb at jump_t, never on request
    (dict(step_size=0.1), "unknown key"),
    (dict(jump_t=[0.5], step_t=[0.5]), "must not share"),
    (dict(jump_t=[float("nan")]), "finite"),
    (dict(max_step=0.0), "max_step"),
])
def test_bad_adaptive_options(options, match):
    with pytest.raises((ValueError, TypeError), match=match):
        helpers.odeint(spiral, torch.tensor(Y0), torch.tensor([0.0, 1.0]), options=options)


def test_unsupported_combinations_are_errors():
    y0 = torch.tensor([Y0, Y0], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(ValueError, match="accepted keys are"):
        helpers.odeint(spiral, y0[0], t, method="rk4", options=dict(jump_t=[0.5]))
    with pytest.raises(ValueError, match="per_sample_steps"):
        helpers.odeint(lambda s, y: -y, y0, t, options=dict(per_sample_steps=True, jump_t=[0.5]))
    with pytest.raises(ValueError, match="compiled=True and event_fn do not support"):
        helpers.odeint(lambda s, y: -y, y0, t, options=dict(norm=lambda x: x.abs().max()), compiled=True)


def test_torchdiffeq_factor_names():
    """ifactor and dfactor are torchdiffeq's names for max_factor and min_factor."""
    y0 = torch.tensor(Y0, dtype=F64)
    t = torch.tensor([0.0, 3.0], dtype=F64)
    a, b = helpers.SolveStats(), helpers.SolveStats()
    ys_a = helpers.odeint(spiral, y0, t, options=dict(ifactor=2.0, dfactor=0.5), stats=a)
    ys_b = helpers.odeint(spiral, y0, t, options=dict(max_factor=2.0, min_factor=0.5), stats=b)
    assert torch.equal(ys_a, ys_b) and a.nfe_forward == b.nfe_forward
    c = helpers.SolveStats()
    helpers.odeint(spiral, y0, t, stats=c)
    assert c.nfe_forward != a.nfe_forward
    with pytest.raises(ValueError, match="torchdiffeq's name"):
        helpers.odeint(spiral, y0, t, options=dict(ifactor=2.0, max_factor=3.0))
