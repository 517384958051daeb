"""Self-checking exercises of the chapter "Losses along the whole path": the forcing term, the
time gradients with a running cost, and the adjoint of the integrated cost.

- ``ch11-ex-forcing``: ``my_forced_rhs(func, g, params, t, z, lam)`` returns
  ``(dlam_dt, da_dt)``, the adjoint's and the parameter channel's right-hand sides with the
  running cost g, checked against Jacobians built by ``torch.func``;
- ``ch11-ex-dldt``: ``my_dLdt(func, g, t0, t1, z0, z1, lam0, lam1)`` returns
  ``(dL_dt0, dL_dt1)`` for ``L = ∫ g dt + ℓ(z(t1))``, checked against backpropagation through
  ``helpers.odeint`` on the state ``(z, q)``;
- ``ch11-q-augment``: multiple choice, the adjoint of the integrated cost q.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jacrev

from ..odeint import odeint
from ..path_loss import RunningCostField, path_loss_gradients
from ._core import call, choice, compare, exercise, unpack
from .reference import small_field


class _Cost(nn.Module):
    """g(t, z) = |z - c|²/2 + sin t (w · z) + |w|²/10: a running cost with a parameter w
    that enters both through z's weight and directly."""

    def __init__(self, generator):
        super().__init__()
        self.w = nn.Parameter(torch.randn(2, generator=generator, dtype=torch.float64))
        self.c = torch.randn(2, generator=generator, dtype=torch.float64)

    def forward(self, t, z):
        return (0.5 * ((z - self.c) ** 2).sum() + torch.sin(t) * (self.w * z).sum()
                + 0.1 * (self.w ** 2).sum())


def _case(seed):
    func, z0, t0, t1, loss_fn, _ = small_field(seed)
    cost = _Cost(torch.Generator().manual_seed(5000 + seed))
    where = (f"case {seed + 1} (MLP(2, 8, 2) + w sin 2t with a running cost, "
             f"t0 = {t0:.3f}, t1 = {t1:.3f})")
    return func, cost, z0, t0, t1, loss_fn, where


def _reference_rhs(func, cost, t, z, lam):
    """-λ ∂f/∂z - ∂g/∂z and, per parameter, -λ ∂f/∂θ - ∂g/∂θ, from full Jacobians."""
    pf = {k: v.detach() for k, v in func.named_parameters()}
    pg = {k: v.detach() for k, v in cost.named_parameters()}

    def f_of(p, x):
        return functional_call(func, p, (t, x))

    def g_of(p, x):
        return functional_call(cost, p, (t, x))

    jz = jacrev(f_of, argnums=1)(pf, z)  # d × d
    jth = jacrev(f_of, argnums=0)(pf, z)  # name -> d × shape
    gz = jacrev(g_of, argnums=1)(pg, z)
    gth = jacrev(g_of, argnums=0)(pg, z)
    dlam = -(lam @ jz) - gz
    da = [-torch.tensordot(lam, jth[k], dims=1) for k in pf]
    da += [-gth[k] for k in pg]
    return dlam, da


@exercise(
    "ch11-ex-forcing",
    "Your forced adjoint equation",
    hints=(
        "Without a running cost this is chapter 6's augmented system: dλ/dt = -λ ∂f/∂z and "
        "da_θ/dt = -λ ∂f/∂θ, one VJP with grad_outputs = -λ.",
        "The running cost adds -∂g/∂z to dλ/dt and -∂g/∂θ to da_θ/dt; g is a scalar, so its "
        "gradient is already a row.",
        "One reverse pass through the scalar H = (λ * f).sum() + g gives both: the answer is "
        "minus its gradient with respect to z and to every parameter (allow_unused=True, "
        "a parameter that H does not use gets zeros).",
    ),
    success="dλ/dt and da_θ/dt agree with the Jacobians of f and g.",
)
def _forcing(answer):
    worst = 0.0
    for seed in range(2):
        func, cost, z0, t0, t1, _, where = _case(seed)
        params = list(func.parameters()) + list(cost.parameters())
        gen = torch.Generator().manual_seed(6000 + seed)
        t = torch.tensor(t0 + 0.3, dtype=torch.float64)
        z = torch.randn(2, generator=gen, dtype=torch.float64)
        lam = torch.randn(2, generator=gen, dtype=torch.float64)
        want_lam, want_a = _reference_rhs(func, cost, t, z, lam)
        out = call(answer, func, cost, params, t, z.clone(), lam.clone(), where=where)
        got_lam, got_a = unpack("the result (dλ/dt, da_θ/dt)", out, 2, where)
        got_a = unpack("da_θ/dt, one tensor per parameter", got_a, len(params), where)
        worst = max(worst, compare(
            "dλ/dt", got_lam, want_lam, where=where, tol=1e-10,
            look_at="both terms, -λ ∂f/∂z and the forcing -∂g/∂z, with their signs."))
        for k, (got, want) in enumerate(zip(got_a, want_a)):
            worst = max(worst, compare(
                f"da_θ/dt (parameter {k})", got, want, where=where, tol=1e-10,
                look_at="-λ ∂f/∂θ - ∂g/∂θ, shaped like the parameter; g's own "
                        "parameter gets only -∂g/∂θ."))
    return worst


@exercise(
    "ch11-ex-dldt",
    "Your dL/dt0 and dL/dt1 with a running cost",
    hints=(
        "Without g these are chapter 9's: dL/dt1 = λ(t1) f(t1) and dL/dt0 = -λ(t0) f(t0).",
        "Moving t1 later also lengthens the integral by g(z(t1), t1) dt; moving t0 later "
        "shortens it by g(z0, t0) dt.",
        "Both are ±H = ±(λ f + g), at t1 with λ(t1) = ∂ℓ/∂z(t1), at t0 with λ(t0); a row "
        "times a column is (lam * f).sum().",
    ),
    success="dL/dt0 and dL/dt1 agree with backpropagation through the solver on (z, q).",
)
def _dldt(answer):
    worst = 0.0
    for seed in range(2):
        func, cost, z0, t0, t1, loss_fn, where = _case(seed)
        times = torch.tensor([t0, t1], dtype=torch.float64)
        tol = dict(rtol=1e-8, atol=1e-10)
        out = path_loss_gradients(func, cost, z0, times,
                                  lambda zs: loss_fn(zs[-1]), **tol)
        with torch.no_grad():
            z1 = odeint(func, z0, times, **tol)[-1]
        got = call(answer, func, cost, t0, t1, z0.clone(), z1.clone(),
                   out.dLdz0.clone(), out.jumps[-1].clone(), where=where)
        tt = times.clone().requires_grad_(True)
        zs, q = odeint(RunningCostField(func, cost),
                       (z0, torch.zeros((), dtype=torch.float64)), tt, **tol)
        (want,) = torch.autograd.grad(q[-1] + loss_fn(zs[-1]), tt)
        got0, got1 = unpack("the result (dL/dt0, dL/dt1)", got, 2, where)
        worst = max(worst, compare(
            "dL/dt0", got0, want[0], where=where, tol=1e-6,
            look_at="λ(t0) f at t0 and the running cost at t0, and their common sign."))
        worst = max(worst, compare(
            "dL/dt1", got1, want[1], where=where, tol=1e-6,
            look_at="λ(t1) f at t1 plus the running cost at t1."))
    return worst


choice(
    "ch11-q-augment",
    "The adjoint of the integrated cost q",
    options={
        "a": "0 for all t, since no loss term looks at q before t_N",
        "b": "1 for all t",
        "c": "it jumps by 1 at every observation time",
        "d": "g(z(t), θ, t)",
    },
    right="d99f8767498f86eb",
    wrong_notes={
        "a": "the loss contains q(t_N) itself: what is ∂L/∂q(t_N)?",
        "c": "the point losses look at z only, so λ_q has no jumps.",
        "d": "λ_q solves its own adjoint equation: which of f and g depends on q?",
    },
    hints=(
        "λ_q(t_N) = ∂L/∂q(t_N); L = q(t_N) + Σ ℓ_i(z(t_i)).",
        "dλ_q/dt = -(λ_z ∂f/∂q + λ_q ∂g/∂q), and neither f nor g depends on q.",
        "So λ_q stays at its terminal value, and λ_q ∂g/∂z is the forcing term.",
    ),
    success="λ_q = 1 all along, so the q-row of the augmented adjoint is the forcing -∂g/∂z.",
)
