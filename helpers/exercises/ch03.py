"""Self-checking exercises of the chapter "The Lagrangian"."""
from __future__ import annotations

import numpy as np
import torch

from ._core import call, choice, compare, exercise, unpack

GRID = 2001  # samples per case: a trapezoid rule is within 1e-6 here


def _poly_case(seed: int):
    """Random polynomial λ(t) (rows) and z(t) on a random interval, sampled on a grid.

    Returns the samples and the exact values of the boundary term and of ∫ λ̇ z dt, from the
    polynomials' coefficients (no quadrature).
    """
    rng = np.random.default_rng(seed)
    d = int(rng.integers(2, 5))
    t0 = float(rng.uniform(-1.0, 0.5))
    t1 = t0 + float(rng.uniform(1.0, 2.0))
    lam_c = rng.normal(size=(d, 4))  # cubic per component
    z_c = rng.normal(size=(d, 4))
    polys_lam = [np.polynomial.Polynomial(c) for c in lam_c]
    polys_z = [np.polynomial.Polynomial(c) for c in z_c]
    t = np.linspace(t0, t1, GRID)
    lam = np.stack([p(t) for p in polys_lam], axis=-1)
    lam_dot = np.stack([p.deriv()(t) for p in polys_lam], axis=-1)
    z = np.stack([p(t) for p in polys_z], axis=-1)
    boundary = sum(pl(t1) * pz(t1) - pl(t0) * pz(t0) for pl, pz in zip(polys_lam, polys_z))
    integral = 0.0
    for pl, pz in zip(polys_lam, polys_z):
        antiderivative = (pl.deriv() * pz).integ()
        integral += antiderivative(t1) - antiderivative(t0)
    as_t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    inputs = (as_t(lam), as_t(lam_dot), as_t(z), as_t(t))
    where = f"case {seed + 1} (d = {d}, t from {t0:.2f} to {t1:.2f}, {GRID} samples)"
    return inputs, torch.tensor(boundary), torch.tensor(integral), where


@exercise(
    "ch3-ex-ibp-terms",
    "The two terms on the right of integration by parts",
    hints=(
        "Row i of lam, lam_dot and z is λ(t_i), λ̇(t_i), z(t_i)ᵀ; a row times a column is the "
        "sum over the last axis of an elementwise product.",
        "The boundary term uses only the first and last rows: λ(t1) z(t1) minus the same at t0.",
        "For the integral, form the scalar λ̇(t_i) z(t_i) at every sample, then integrate over "
        "t with helpers.quadrature.simpson (or trapezoid).",
    ),
    success="Both terms of (ch3-ibp) match the exact integrals of random cubic λ and z.",
)
def _ibp_terms(answer):
    worst = 0.0
    for seed in range(3):
        inputs, boundary, integral, where = _poly_case(seed)
        out = call(answer, *(x.clone() for x in inputs), where=where)
        boundary_got, integral_got = unpack("the result (boundary, integral)", out, 2, where)
        worst = max(worst, compare(
            "the boundary term λ(t1) z(t1) - λ(t0) z(t0)", boundary_got, boundary,
            where=where, tol=1e-9,
            look_at="which rows are the two ends, and the sign in front of the t0 end."))
        worst = max(worst, compare(
            "the integral ∫ λ̇ z dt", integral_got, integral, where=where, tol=1e-5,
            look_at="the integrand is λ̇(t) z(t), a scalar per time (λ̇, not λ), "
                    "integrated over t."))
    return worst


choice(
    "ch3-ex-encoder",
    "Which term survives when the initial state depends on θ",
    options={
        "a": "λ(t1) dz(t1)/dθ",
        "b": "λ(t0) dz(t0)/dθ",
        "c": "∫ λ ∂f/∂θ dt",
        "d": "none: every term stays as it was",
    },
    right="5faa35782538ef5a",
    wrong_notes={
        "a": "that term contains the hard derivative at t1; it was never crossed out.",
        "c": "that term is there for every z(t0); ask which term was dropped because z(t0) "
             "was fixed.",
        "d": "one term of (ch3-dtheta) was crossed out only because dz(t0)/dθ = 0.",
    },
    hints=(
        "Look at (ch3-dtheta): which term was crossed out, and why?",
        "It was crossed out because z(t0) did not depend on θ. With an encoder, it does.",
        "The crossed-out term sits at the start of the interval.",
    ),
    success="With an encoder, the t0 boundary term stays: a VJP through the encoder.",
)
