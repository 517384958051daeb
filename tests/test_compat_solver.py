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
