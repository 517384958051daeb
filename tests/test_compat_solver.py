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
