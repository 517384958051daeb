"""helpers.exercises: every checker passes its reference answer, fails planted wrong answers with
a message that names the quantity, calls an untouched starter "not attempted", and never prints
the reference answer's numbers. Also: the package ships in the wheel, and ``./run lab`` serves
the chapters."""
from __future__ import annotations

import json
import math
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile

import pytest
import torch

from helpers import exercises as ex
from helpers.exercises import _core
from helpers.problems import ExponentialODE, TimeDependentODE
from helpers.quadrature import simpson

ROOT = pathlib.Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- reference answers
def ibp_terms(lam, lam_dot, z, t):
    boundary = lam[-1] @ z[-1] - lam[0] @ z[0]
    return boundary, simpson((lam_dot * z).sum(dim=1), t)


def closed_form(theta, z0, y, t0, t1):
    z1 = z0 * math.exp(theta * (t1 - t0))
    lam1 = z1 - y
    return (t1 - t0) * (lam1 @ z1), lam1 * math.exp(theta * (t1 - t0))


def timedep(a, b, z0, t0, t1):
    c = (z0 @ z0) * math.exp(2 * a * (t1 - t0) + 2 * b * (math.sin(t1) - math.sin(t0)))
    return c * (t1 - t0), c * (math.sin(t1) - math.sin(t0))


def mlp_vjp(W1, b1, W2, b2, z, lam):
    h = torch.tanh(W1 @ z + b1)
    mu = (lam @ W2) * (1 - h ** 2)
    return mu @ W1, (torch.outer(mu, z), mu, torch.outer(lam, h), lam)


def my_vjp(func, t, z, lam):
    params = [p for p in func.parameters() if p.requires_grad]
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        out = func(t, z)
        grads = torch.autograd.grad(out, (z, *params), grad_outputs=lam)
    return grads[0], tuple(grads[1:])


def my_augmented(func, t, z, lam):
    vz, vtheta = my_vjp(func, t, z, lam)
    return func(t, z).detach(), -vz, tuple(-v for v in vtheta)


def _rk4(rhs, t, state, h):
    k1 = rhs(t, state)
    k2 = rhs(t + h / 2, [y + h / 2 * k for y, k in zip(state, k1)])
    k3 = rhs(t + h / 2, [y + h / 2 * k for y, k in zip(state, k2)])
    k4 = rhs(t + h, [y + h * k for y, k in zip(state, k3)])
    return [y + h / 6 * (a + 2 * b + 2 * c + d) for y, a, b, c, d in zip(state, k1, k2, k3, k4)]


def _solve(func, z0, t0, t1, loss_fn, steps, augmented=my_augmented):
    h = (t1 - t0) / steps
    with torch.no_grad():
        state = [z0]
        for k in range(steps):
            state = _rk4(lambda t, s: [func(torch.tensor(t, dtype=torch.float64), s[0])], t0 + k * h, state, h)
    z1 = state[0].clone().requires_grad_(True)
    (lam1,) = torch.autograd.grad(loss_fn(z1), z1)
    params = [p for p in func.parameters() if p.requires_grad]

    def rhs(t, s):
        dz, dlam, dth = augmented(func, torch.tensor(t, dtype=torch.float64), s[0], s[1])
        return [dz, dlam, *dth]

    state = [z1.detach(), lam1, *[torch.zeros_like(p) for p in params]]
    for k in range(steps):
        state = [x.detach() for x in _rk4(rhs, t1 - k * h, state, -h)]
    return state, lam1, z1.detach()


def my_adjoint(func, z0, t0, t1, loss_fn, steps):
    state, _, _ = _solve(func, z0, t0, t1, loss_fn, steps)
    return state[1], state[2:]


def my_jumps(prediction, targets):
    r, n = prediction - targets, prediction.numel()
    return 2 * r / n, torch.sign(r) / n


def my_dldt(func, z0, t0, t1, loss_fn, steps):
    state, lam1, z1 = _solve(func, z0, t0, t1, loss_fn, steps)
    with torch.no_grad():
        dt0 = -(state[1] * func(torch.tensor(t0, dtype=torch.float64), z0)).sum()
        dt1 = (lam1 * func(torch.tensor(t1, dtype=torch.float64), z1)).sum()
    return dt0, dt1


def linear_lambda(A, lam1, t, t1):
    return lam1 @ torch.linalg.matrix_exp(A * (t1 - t))


def variational_rhs(func, t, z, dz):
    return torch.func.jvp(lambda x: func(t, x), (z,), (dz,))[1]


def my_euler_grads(func, z0, t0, t1, loss_fn, steps, at_next=False):
    h = (t1 - t0) / steps
    params = [p for p in func.parameters() if p.requires_grad]
    zs = [z0]
    with torch.no_grad():
        for n in range(steps):
            zs.append(zs[-1] + h * func(torch.tensor(t0 + n * h, dtype=torch.float64), zs[-1]))
    z1 = zs[-1].clone().requires_grad_(True)
    (lam,) = torch.autograd.grad(loss_fn(z1), z1)
    grads = [torch.zeros_like(p) for p in params]
    for n in reversed(range(steps)):
        m = n + 1 if at_next else n  # at_next: the continuous adjoint's Euler step
        z = zs[m].clone().requires_grad_(True)
        out = func(torch.tensor(t0 + m * h, dtype=torch.float64), z)
        vz, *vth = torch.autograd.grad(out, [z, *params], grad_outputs=h * lam)
        grads = [g + v for g, v in zip(grads, vth)]
        lam = lam + vz
    return lam, tuple(grads)


def rk_step_by_hand(func, t, z, h, tableau):
    k = []
    for c_i, a_i in zip(tableau.c, tableau.a):
        z_i = z + h * sum((a * k_j for a, k_j in zip(a_i, k)), torch.zeros_like(z))
        k.append(func(t + c_i * h, z_i))
    return z + h * sum((b * k_i for b, k_i in zip(tableau.b, k)), torch.zeros_like(z))


def estimate_order(func, z0, T, method, h):
    from helpers import odeint

    t = torch.tensor([0.0, T], dtype=z0.dtype)
    with torch.no_grad():
        zs = [odeint(func, z0, t, method=method, options=dict(step_size=s))[-1]
              for s in (h, h / 2, h / 4)]
    return math.log2((zs[0] - zs[1]).norm() / (zs[1] - zs[2]).norm())


def graph_bytes_per_step(B, widths, method, dtype):
    from helpers import METHODS

    return METHODS[method].stages * B * sum(widths[:-1]) * torch.empty((), dtype=dtype).element_size()


def forward_sensitivity(func, z0, t0, t1, steps, coupled=True):
    from helpers import odeint

    params = [w for w in func.parameters() if w.requires_grad]
    d, p = z0.numel(), sum(w.numel() for w in params)

    def rhs(t, state):
        with torch.enable_grad():
            z = state[:d].detach().requires_grad_(True)
            out = func(t, z)
            rows = []
            for i in range(d):  # row i of [∂f/∂z, ∂f/∂θ]
                g = torch.autograd.grad(out[i], [z, *params], retain_graph=True)
                rows.append(torch.cat([x.reshape(-1) for x in g]))
        J, S = torch.stack(rows), state[d:].reshape(d, p)
        dS = J[:, d:] + (J[:, :d] @ S if coupled else 0)  # coupled=False: (∂f/∂z) S missing
        return torch.cat([out.detach(), dS.reshape(-1)])

    state0 = torch.cat([z0, torch.zeros(d * p, dtype=z0.dtype)])
    t = torch.tensor([t0, t1], dtype=z0.dtype)
    with torch.no_grad():
        s1 = odeint(rhs, state0, t, method="rk4", options=dict(step_size=(t1 - t0) / steps))[-1]
    return s1[:d], s1[d:].reshape(d, p)


def numbers_kept_per_step(B, widths, method):
    """app-ex-kept: counted, not measured; every Linear layer's input per evaluation for
    backpropagation, and nothing per step for the adjoint."""
    from helpers import METHODS

    return METHODS[method].stages * B * sum(widths[:-1]), 0


def my_forced_rhs(func, g, params, t, z, lam):
    """ch11-ex-forcing: minus the gradient of H = λ f + g in z and in every parameter."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        H = (lam * func(t, z)).sum() + g(t, z)
        dH = torch.autograd.grad(H, [z, *params], allow_unused=True)
    out = [torch.zeros_like(x) if d is None else -d for x, d in zip([z, *params], dH)]
    return out[0], out[1:]


def _forced_without_g(func, g, params, t, z, lam):  # the forcing term forgotten
    return my_forced_rhs(func, lambda s, x: x.sum() * 0, params, t, z, lam)


def _forced_plus_g(func, g, params, t, z, lam):  # +∂g/∂z, +∂g/∂θ
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        H = (lam * func(t, z)).sum() - g(t, z)
        dH = torch.autograd.grad(H, [z, *params], allow_unused=True)
    out = [torch.zeros_like(x) if d is None else -d for x, d in zip([z, *params], dH)]
    return out[0], out[1:]


def my_path_dldt(func, g, t0, t1, z0, z1, lam0, lam1, sign_g0=-1.0, with_g=True):
    """ch11-ex-dldt: dL/dt0 = -(λ(t0) f + g) at t0, dL/dt1 = λ(t1) f + g at t1."""
    s0, s1 = (torch.tensor(s, dtype=torch.float64) for s in (t0, t1))
    with torch.no_grad():
        g0, g1 = (g(s0, z0), g(s1, z1)) if with_g else (0.0, 0.0)
        return (-(lam0 * func(s0, z0)).sum() + sign_g0 * g0,
                (lam1 * func(s1, z1)).sum() + g1)


def _dldt_without_g(*args):  # chapter 9's formulas
    return my_path_dldt(*args, with_g=False)


def _dldt_g_plus_at_t0(*args):
    return my_path_dldt(*args, sign_g0=1.0)


def clock_grads(func, z0, tau, y, offset, rate):
    """ch13-ex-clock: dL/dt_i = (z(t_i) - y_i) f(t_i, z(t_i)), summed with the weights 1 and τ_i."""
    from helpers import odeint

    t = torch.cat([torch.zeros(1, dtype=z0.dtype), offset + rate * tau])
    with torch.no_grad():
        z = odeint(func, z0, t, rtol=1e-10, atol=1e-12)[1:]
        dL_dt = torch.stack([((zi - yi) * func(s, zi)).sum() for s, zi, yi in zip(t[1:], z, y)])
    return dL_dt.sum(), (tau * dL_dt).sum()


def landing_grads(h0, v0, g0):
    """ch13-ex-landing: the larger root of h0 + v0 t - g0 t²/2, and dt*/dp = -(∂h(t*)/∂p) / v*."""
    t_star = (v0 + math.sqrt(v0 ** 2 + 2 * g0 * h0)) / g0
    v_star = v0 - g0 * t_star
    return t_star, -1 / v_star, -t_star / v_star, t_star ** 2 / (2 * v_star)


def stiff_rate(func, t, z):
    jac = torch.autograd.functional.jacobian(lambda y: func(t, y), z)
    return max(0.0, (-torch.linalg.eigvals(jac).real).max().item())


REFERENCE = {
    "ch1-ex-rk-step": rk_step_by_hand,
    "ch1-ex-order": estimate_order,
    "ch2-ex-bytes": graph_bytes_per_step,
    "ch2-ex-my-sens": forward_sensitivity,
    "ch3-ex-ibp-terms": ibp_terms,
    "ch3-ex-encoder": "b",
    "ch4-ex-closed-form": closed_form,
    "ch4-ex-timedep": timedep,
    "ch5-ex-byhand": mlp_vjp,
    "ch5-ex-my-vjp": my_vjp,
    "ch5-ex-jvp": "c",
    "ch6-ex-my-dynamics": my_augmented,
    "ch6-ex-my-adjoint": my_adjoint,
    "ch7-ex-l1": my_jumps,
    "ch7-q-memory": "b",
    "ch9-ex-my-dldt0": my_dldt,
    "ch9-q-sign": "b",
    "ch2-q-memory": "b",
    "ch10-q-exact": "b",
    "ch8-ex-linear-lambda": linear_lambda,
    "ch8-ex-variational": variational_rhs,
    "ch10-ex-my-euler": my_euler_grads,
    "app-ex-kept": numbers_kept_per_step,
    "app-q-seminorm": "b",
    "ch12-ex-stiff-rate": stiff_rate,
    "ch12-q-choose": "c",
    "ch13-ex-clock": clock_grads,
    "ch13-ex-landing": landing_grads,
    "ch13-q-reply": "b",
    "ch11-ex-forcing": my_forced_rhs,
    "ch11-ex-dldt": my_path_dldt,
    "ch11-q-augment": "b",
}


# ------------------------------------------------- planted wrong answers: (label, answer, quantity)
def _flip_boundary(lam, lam_dot, z, t):
    b, i = ibp_terms(lam, lam_dot, z, t)
    return lam[-1] @ z[-1] + lam[0] @ z[0], i


def _lam_not_lam_dot(lam, lam_dot, z, t):  # λ instead of λ̇: the wrong integrand
    return ibp_terms(lam, lam_dot, z, t)[0], simpson((lam * z).sum(dim=1), t)


def _transposed_ibp(lam, lam_dot, z, t):  # z λ̇ instead of λ̇ z: a d x d matrix
    return ibp_terms(lam, lam_dot, z, t)[0], simpson(z[:, :, None] * lam_dot[:, None, :], t)


def _closed_no_target(theta, z0, y, t0, t1):  # the target forgotten in λ z: a missing term
    z1 = z0 * math.exp(theta * (t1 - t0))
    return (t1 - t0) * (z1 @ z1), closed_form(theta, z0, y, t0, t1)[1]


def _closed_no_length(theta, z0, y, t0, t1):  # the factor t1 - t0 missing
    g, lam0 = closed_form(theta, z0, y, t0, t1)
    return g / (t1 - t0), lam0


def _closed_lam_sign(theta, z0, y, t0, t1):  # e^{-θ(t1 - t0)}: the adjoint run the wrong way
    g, lam0 = closed_form(theta, z0, y, t0, t1)
    return g, lam0 * math.exp(-2 * theta * (t1 - t0))


def _timedep_cos(a, b, z0, t0, t1):  # ∫ cos t dt taken as cos t1 - cos t0
    da, db = timedep(a, b, z0, t0, t1)
    return da, db / (math.sin(t1) - math.sin(t0)) * (math.cos(t1) - math.cos(t0))


def _timedep_sign(a, b, z0, t0, t1):
    da, db = timedep(a, b, z0, t0, t1)
    return -da, db


def _byhand_transposed(W1, b1, W2, b2, z, lam):  # z μ instead of μᵀ zᵀ
    vz, (gW1, gb1, gW2, gb2) = mlp_vjp(W1, b1, W2, b2, z, lam)
    return vz, (gW1.T, gb1, gW2, gb2)


def _byhand_no_tanh(W1, b1, W2, b2, z, lam):  # tanh's derivative missing
    h = torch.tanh(W1 @ z + b1)
    mu = lam @ W2
    return mu @ W1, (torch.outer(mu, z), mu, torch.outer(lam, h), lam)


def _vjp_sign(func, t, z, lam):
    vz, vth = my_vjp(func, t, z, lam)
    return -vz, vth


def _vjp_jacobian_transposed(func, t, z, lam):  # ∂f/∂z λᵀ instead of λ ∂f/∂z
    vz, vth = my_vjp(func, t, z, lam)
    J = torch.autograd.functional.jacobian(lambda x: func(t, x), z.detach())
    if z.dim() == 1:
        return J @ lam, vth
    return torch.einsum("bibj,bj->bi", J, lam), vth


def _vjp_no_batch_sum(func, t, z, lam):  # parameter products of the first row only
    if z.dim() == 1:
        return my_vjp(func, t, z, lam)
    vz, _ = my_vjp(func, t, z, lam)
    return vz, my_vjp(func, t, z[:1], lam[:1])[1]


def _dyn_plus(func, t, z, lam):  # +λ ∂f/∂z: a sign error in the adjoint equation
    dz, dlam, dth = my_augmented(func, t, z, lam)
    return dz, -dlam, dth


def _dyn_theta_plus(func, t, z, lam):
    dz, dlam, dth = my_augmented(func, t, z, lam)
    return dz, dlam, tuple(-x for x in dth)


def _adjoint_euler(func, z0, t0, t1, loss_fn, steps):  # a plain explicit Euler solve
    h = (t1 - t0) / steps
    with torch.no_grad():
        z = z0.clone()
        for k in range(steps):
            z = z + h * func(torch.tensor(t0 + k * h, dtype=torch.float64), z)
    z1 = z.clone().requires_grad_(True)
    (lam,) = torch.autograd.grad(loss_fn(z1), z1)
    params = [p for p in func.parameters() if p.requires_grad]
    z, a = z1.detach(), [torch.zeros_like(p) for p in params]
    for k in range(steps):
        dz, dlam, dth = my_augmented(func, torch.tensor(t1 - k * h, dtype=torch.float64), z, lam)
        z, lam = z - h * dz, lam - h * dlam
        a = [x - h * y for x, y in zip(a, dth)]
    return lam, a


def _adjoint_no_theta_minus(func, z0, t0, t1, loss_fn, steps):
    aug = lambda f, t, z, lam: _dyn_theta_plus(f, t, z, lam)  # noqa: E731
    state, _, _ = _solve(func, z0, t0, t1, loss_fn, steps, augmented=aug)
    return state[1], state[2:]


def _jumps_no_two(prediction, targets):  # d(r²)/dr taken as r
    mse_jump, mae_jump = my_jumps(prediction, targets)
    return mse_jump / 2, mae_jump


def _jumps_per_window(prediction, targets):  # divided by the batch size only
    r = prediction - targets
    b = prediction.shape[1]
    return 2 * r / b, torch.sign(r) / b


def _jumps_mae_sign(prediction, targets):  # sign(y - z): the residual reversed
    mse_jump, mae_jump = my_jumps(prediction, targets)
    return mse_jump, -mae_jump


def _dldt_sign(func, z0, t0, t1, loss_fn, steps):
    dt0, dt1 = my_dldt(func, z0, t0, t1, loss_fn, steps)
    return -dt0, dt1


def _dldt_wrong_end(func, z0, t0, t1, loss_fn, steps):  # λ(t1) f(t1) used for t0
    dt0, dt1 = my_dldt(func, z0, t0, t1, loss_fn, steps)
    return -dt1, dt1


def _linear_transposed(A, lam1, t, t1):  # e^{A(t1 - t)} λᵀ: the column form with A, not Aᵀ
    return torch.linalg.matrix_exp(A * (t1 - t)) @ lam1


def _linear_sign(A, lam1, t, t1):  # e^{A(t - t1)}: the exponent's sign flipped
    return lam1 @ torch.linalg.matrix_exp(A * (t - t1))


def _variational_vjp(func, t, z, dz):  # δz ∂f/∂z (a VJP) instead of (∂f/∂z) δz
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        return torch.autograd.grad(func(t, z), z, grad_outputs=dz)[0]


def _variational_minus(func, t, z, dz):  # -J δz: the adjoint's sign carried over
    return -variational_rhs(func, t, z, dz)


def _euler_at_next(func, z0, t0, t1, loss_fn, steps):  # the continuous adjoint's Euler step
    return my_euler_grads(func, z0, t0, t1, loss_fn, steps, at_next=True)


def _euler_theta_unscaled(func, z0, t0, t1, loss_fn, steps):  # the factor h missing in dL/dθ
    lam, grads = my_euler_grads(func, z0, t0, t1, loss_fn, steps)
    return lam, tuple(g * steps / (t1 - t0) for g in grads)


def _step_no_stage_times(func, t, z, h, tableau):  # every stage evaluated at t
    return rk_step_by_hand(lambda s, x: func(t, x), t, z, h, tableau)


def _step_no_h_in_stages(func, t, z, h, tableau):  # z + Σ a_ij k_j: the factor h missing
    k = []
    for c_i, a_i in zip(tableau.c, tableau.a):
        k.append(func(t + c_i * h, z + sum((a * k_j for a, k_j in zip(a_i, k)), torch.zeros_like(z))))
    return z + h * sum((b * k_i for b, k_i in zip(tableau.b, k)), torch.zeros_like(z))


def _order_inverted(func, z0, T, method, h):  # the ratio upside down
    return -estimate_order(func, z0, T, method, h)


def _order_natural_log(func, z0, T, method, h):  # ln instead of log2
    return estimate_order(func, z0, T, method, h) * math.log(2)


def _order_nominal(func, z0, T, method, h):  # the method's nominal order, nothing measured
    from helpers import METHODS

    return METHODS[method].order


def _bytes_hidden_only(B, widths, method, dtype):  # the network's input not counted
    return graph_bytes_per_step(B, widths, method, dtype) * sum(widths[1:-1]) // sum(widths[:-1])


def _bytes_always_8(B, widths, method, dtype):  # 8 bytes a number, whatever the dtype
    return graph_bytes_per_step(B, widths, method, torch.float64)


def _bytes_four_stages(B, widths, method, dtype):  # rk4's four evaluations for every method
    return graph_bytes_per_step(B, widths, "rk4", dtype)


def _sens_no_theta(func, z0, t0, t1, steps):  # ∂f/∂θ missing: S stays zero
    z1, S1 = forward_sensitivity(func, z0, t0, t1, steps)
    return z1, torch.zeros_like(S1)


def _sens_transposed(func, z0, t0, t1, steps):  # p x d instead of d x p
    z1, S1 = forward_sensitivity(func, z0, t0, t1, steps)
    return z1, S1.T


def _sens_no_coupling(func, z0, t0, t1, steps):
    return forward_sensitivity(func, z0, t0, t1, steps, coupled=False)


def _kept_adjoint_states(B, widths, method):  # the adjoint storing the state at every step
    return numbers_kept_per_step(B, widths, method)[0], B * widths[0]


def _kept_bytes(B, widths, method):  # bytes of float32 instead of numbers
    return 4 * numbers_kept_per_step(B, widths, method)[0], 0


def _kept_preactivations(B, widths, method):  # pre-activations counted as well
    from helpers import METHODS

    return METHODS[method].stages * B * (sum(widths[:-1]) + sum(widths[1:-1])), 0


def _clock_minus(func, z0, tau, y, offset, rate):  # the sign of dL/dt0 used for every t_i
    d_offset, d_rate = clock_grads(func, z0, tau, y, offset, rate)
    return -d_offset, -d_rate


def _clock_no_tau(func, z0, tau, y, offset, rate):  # the rate's chain-rule weights τ_i left out
    return clock_grads(func, z0, tau, y, offset, rate)[0], clock_grads(func, z0, tau, y, offset, rate)[0]


def _clock_weights_t(func, z0, tau, y, offset, rate):  # weights t_i = offset + rate τ_i, not τ_i
    d_offset, d_rate = clock_grads(func, z0, tau, y, offset, rate)
    return d_offset, offset * d_offset + rate * d_rate


def _landing_smaller_root(h0, v0, g0):  # the other root of h = 0, before the throw
    t_star = (v0 - math.sqrt(v0 ** 2 + 2 * g0 * h0)) / g0
    v_star = v0 - g0 * t_star
    return t_star, -1 / v_star, -t_star / v_star, t_star ** 2 / (2 * v_star)


def _landing_plus(h0, v0, g0):  # dt*/dp = +(∂h/∂p) / v*: the minus of the implicit function theorem lost
    t_star, d_h0, d_v0, d_g0 = landing_grads(h0, v0, g0)
    return t_star, -d_h0, -d_v0, -d_g0


def _landing_g_no_half(h0, v0, g0):  # ∂h/∂g0 = -t*² instead of -t*²/2
    t_star, d_h0, d_v0, d_g0 = landing_grads(h0, v0, g0)
    return t_star, d_h0, d_v0, 2 * d_g0


def _rate_modulus(func, t, z):  # the largest |μ|: rotation counted as decay
    jac = torch.autograd.functional.jacobian(lambda y: func(t, y), z)
    return torch.linalg.eigvals(jac).abs().max()


def _rate_singular(func, t, z):  # the largest singular value instead of an eigenvalue
    jac = torch.autograd.functional.jacobian(lambda y: func(t, y), z)
    return torch.linalg.svdvals(jac).max()


def _rate_growth(func, t, z):  # the largest Re μ: the fastest growth, not decay
    jac = torch.autograd.functional.jacobian(lambda y: func(t, y), z)
    return torch.linalg.eigvals(jac).real.max()


WRONG = [
    ("ch1-ex-rk-step", _step_no_stage_times, "the new state"),
    ("ch1-ex-rk-step", _step_no_h_in_stages, "the new state"),
    ("ch1-ex-order", _order_inverted, "your order estimate"),
    ("ch1-ex-order", _order_natural_log, "your order estimate"),
    ("ch1-ex-order", _order_nominal, "your order estimate"),
    ("ch2-ex-bytes", _bytes_hidden_only, "bytes per step"),
    ("ch2-ex-bytes", _bytes_always_8, "bytes per step"),
    ("ch2-ex-bytes", _bytes_four_stages, "bytes per step"),
    ("ch2-ex-my-sens", _sens_no_theta, "S(t1)"),
    ("ch2-ex-my-sens", _sens_transposed, "S(t1)"),
    ("ch2-ex-my-sens", _sens_no_coupling, "S(t1)"),
    ("ch3-ex-ibp-terms", _flip_boundary, "boundary term"),
    ("ch3-ex-ibp-terms", _lam_not_lam_dot, "integral"),
    ("ch3-ex-ibp-terms", _transposed_ibp, "integral"),
    ("ch3-ex-encoder", "a", "option (a)"),
    ("ch3-ex-encoder", "d", "option (d)"),
    ("ch4-ex-closed-form", _closed_no_target, "dL/dθ"),
    ("ch4-ex-closed-form", _closed_no_length, "dL/dθ"),
    ("ch4-ex-closed-form", _closed_lam_sign, "λ(t0)"),
    ("ch4-ex-timedep", _timedep_cos, "dL/db"),
    ("ch4-ex-timedep", _timedep_sign, "dL/da"),
    ("ch5-ex-byhand", _byhand_transposed, "λ ∂f/∂W1"),
    ("ch5-ex-byhand", _byhand_no_tanh, "λ ∂f/∂z"),
    ("ch5-ex-my-vjp", _vjp_sign, "λ ∂f/∂z"),
    ("ch5-ex-my-vjp", _vjp_jacobian_transposed, "λ ∂f/∂z"),
    ("ch5-ex-my-vjp", _vjp_no_batch_sum, "λ ∂f/∂θ"),
    ("ch5-ex-jvp", "b", "option (b)"),
    ("ch6-ex-my-dynamics", _dyn_plus, "dλ/dt"),
    ("ch6-ex-my-dynamics", _dyn_theta_plus, "da_θ/dt"),
    ("ch6-ex-my-adjoint", _adjoint_euler, "dL/dz0"),
    ("ch6-ex-my-adjoint", _adjoint_no_theta_minus, "dL/dθ"),
    ("ch7-ex-l1", _jumps_no_two, "MSE jump"),
    ("ch7-ex-l1", _jumps_per_window, "MSE jump"),
    ("ch7-ex-l1", _jumps_mae_sign, "MAE jump"),
    ("ch7-q-memory", "a", "option (a)"),
    ("ch7-q-memory", "d", "option (d)"),
    ("ch9-ex-my-dldt0", _dldt_sign, "dL/dt0"),
    ("ch9-ex-my-dldt0", _dldt_wrong_end, "dL/dt0"),
    ("ch9-q-sign", "a", "option (a)"),
    ("ch2-q-memory", "a", "option (a)"),
    ("ch10-q-exact", "c", "option (c)"),
    ("ch10-q-exact", "a", "option (a)"),
    ("ch8-ex-linear-lambda", _linear_transposed, "λ(t)"),
    ("ch8-ex-linear-lambda", _linear_sign, "λ(t)"),
    ("ch8-ex-variational", _variational_vjp, "(∂f/∂z) δz"),
    ("ch8-ex-variational", _variational_minus, "(∂f/∂z) δz"),
    ("ch10-ex-my-euler", _euler_at_next, "dL/dz0"),
    ("ch10-ex-my-euler", _euler_theta_unscaled, "dL/dθ"),
    ("app-ex-kept", _kept_adjoint_states, "adjoint numbers per step"),
    ("app-ex-kept", _kept_bytes, "backprop numbers per step"),
    ("app-ex-kept", _kept_preactivations, "backprop numbers per step"),
    ("app-q-seminorm", "a", "option (a)"),
    ("app-q-seminorm", "c", "option (c)"),
    ("ch12-ex-stiff-rate", _rate_modulus, "the stiffness rate"),
    ("ch12-ex-stiff-rate", _rate_singular, "the stiffness rate"),
    ("ch12-ex-stiff-rate", _rate_growth, "the stiffness rate"),
    ("ch12-q-choose", "a", "option (a)"),
    ("ch12-q-choose", "d", "option (d)"),
    ("ch13-ex-clock", _clock_minus, "dL/d offset"),
    ("ch13-ex-clock", _clock_no_tau, "dL/d rate"),
    ("ch13-ex-clock", _clock_weights_t, "dL/d rate"),
    ("ch13-ex-landing", _landing_smaller_root, "t*"),
    ("ch13-ex-landing", _landing_plus, "dt*/dh0"),
    ("ch13-ex-landing", _landing_g_no_half, "dt*/dg0"),
    ("ch13-q-reply", "a", "option (a)"),
    ("ch13-q-reply", "c", "option (c)"),
    ("ch11-ex-forcing", _forced_without_g, "dλ/dt"),
    ("ch11-ex-forcing", _forced_plus_g, "dλ/dt"),
    ("ch11-ex-dldt", _dldt_without_g, "dL/dt0"),
    ("ch11-ex-dldt", _dldt_g_plus_at_t0, "dL/dt0"),
    ("ch11-q-augment", "a", "option (a)"),
    ("ch11-q-augment", "c", "option (c)"),
]


def _starter(*args):
    raise NotImplementedError


# ------------------------------------------------------------------------------------------ tests
def test_every_registered_exercise_has_a_reference_and_a_planted_wrong_answer():
    assert sorted(REFERENCE) == ex.labels()
    assert {label for label, _, _ in WRONG} == set(ex.labels())


# Checkers that compare an estimate with an estimate: ch1-ex-order compares the order found from
# three solves without the exact solution with the order measured against the closed form; the
# two agree to within 0.6% at the checker's step sizes, not to rounding.
ESTIMATES = {"ch1-ex-order": 0.01}


@pytest.mark.parametrize("label", sorted(REFERENCE))
def test_reference_answer_is_right(label, capsys):
    result = ex.check(label, REFERENCE[label])
    assert result.status == "right", result.message
    assert result.message in capsys.readouterr().out
    assert all(len(line) <= 68 for line in result.message.splitlines()), result.message
    assert "right" in result.message
    if callable(REFERENCE[label]):
        assert result.error is not None and result.error < ESTIMATES.get(label, 1e-5)


@pytest.mark.parametrize("label,answer,quantity", WRONG,
                         ids=[f"{w[0]}-{getattr(w[1], '__name__', w[1])}" for w in WRONG])
def test_planted_wrong_answer_is_caught_and_named(label, answer, quantity):
    result = ex.check(label, answer)
    assert result.status == "wrong", result.message
    first = result.message.split("Look at:")[0].replace("\n", " ")
    assert quantity in first, result.message
    assert all(len(line) <= 68 for line in result.message.splitlines()), result.message
    assert "Look at:" in result.message and "ex.hint" in result.message
    if callable(answer):
        assert "case " in first  # at which input


@pytest.mark.parametrize("label", sorted(REFERENCE))
@pytest.mark.parametrize("starter", [..., None, _starter], ids=["ellipsis", "none", "raises"])
def test_untouched_starter_is_not_attempted(label, starter):
    if starter is _starter and not callable(REFERENCE[label]):
        pytest.skip("a multiple-choice answer is a letter, not a function")
    result = ex.check(label, starter)
    assert result.status == "not attempted" and "not attempted yet" in result.message
    assert all(len(line) <= 68 for line in result.message.splitlines()), result.message
    assert result.error is None


def _numbers(value):
    """The ways a reference value might be printed."""
    flat = []
    if isinstance(value, (tuple, list)):
        for v in value:
            flat += _numbers(v)
        return flat
    if isinstance(value, torch.Tensor):
        return [x for v in value.detach().reshape(-1).tolist() for x in _numbers(v)]
    x = float(value)
    if abs(x) < 1e-3:  # tiny values print as noise in any message; nothing to leak
        return []
    forms = [f"{x:.3f}", f"{x:.4g}", f"{x:.2e}", f"{x:.3e}", f"{x:.6f}"]
    return [s for s in forms if len(s.lstrip("-")) >= 4]  # "2" alone says nothing


class Recorder:
    """Wraps a reference answer: returns its values and remembers them."""

    def __init__(self, fn):
        self.fn, self.values = fn, []

    def __call__(self, *args):
        out = self.fn(*args)
        self.values.append(out)
        return out


@pytest.mark.parametrize("label", sorted(k for k, v in REFERENCE.items() if callable(v)))
def test_no_message_contains_the_reference_numbers(label):
    recorder = Recorder(REFERENCE[label])
    messages = [ex.check(label, recorder).message]
    for lab, answer, _ in WRONG:
        if lab == label:
            wrapped = Recorder(answer)
            messages.append(ex.check(label, wrapped).message)
    messages += [ex.check(label, ...).message]
    messages += [ex.hint(label, n) for n in (1, 2, 3)]
    numbers = {s for v in recorder.values for s in _numbers(v)}
    assert numbers, "the recorder saw no reference values"
    for message in messages:
        leaked = [s for s in numbers if s in message]
        assert not leaked, f"{label}: message shows reference values {leaked}:\n{message}"


def test_multiple_choice_answers_are_not_stored_in_clear():
    source = "".join(p.read_text() for p in (ROOT / "helpers" / "exercises").glob("*.py"))
    for label in ("ch11-q-augment", "ch3-ex-encoder", "ch5-ex-jvp", "ch7-q-memory", "ch9-q-sign", "ch2-q-memory", "ch10-q-exact",
                  "ch13-q-reply", "app-q-seminorm", "ch12-q-choose"):
        assert _core.digest(label, REFERENCE[label]) in source
        assert not re.search(rf'right\s*=\s*"{REFERENCE[label]}"', source)


def test_check_accepts_option_spellings():
    assert ex.check("ch9-q-sign", " (B) ").status == "right"
    assert ex.check("ch9-q-sign", "z").status == "wrong"
    assert "not one of the options" in ex.check("ch9-q-sign", "z").message


def test_bad_label_and_hint_arguments_raise():
    with pytest.raises(ValueError, match="label 'ch4-nope'.*ch4-ex-closed-form"):
        ex.check("ch4-nope", closed_form)
    with pytest.raises(TypeError, match="label"):
        ex.check(4, closed_form)
    with pytest.raises(ValueError, match="n must be"):
        ex.hint("ch4-ex-closed-form", 4)
    with pytest.raises(TypeError, match="n must be"):
        ex.hint("ch4-ex-closed-form", "1")


def test_hints_are_graded_and_distinct():
    for label in ex.labels():
        hints = [ex.hint(label, n) for n in (1, 2, 3)]
        assert len(set(hints)) == 3 and all(f"hint {n} of 3" in h for n, h in zip((1, 2, 3), hints))
        assert all(len(line) <= 68 for h in hints for line in h.splitlines())


def test_a_function_that_crashes_is_wrong_not_an_error():
    def broken(theta, z0, y, t0, t1):
        return undefined_name  # noqa: F821

    result = ex.check("ch4-ex-closed-form", broken)
    assert result.status == "wrong" and "NameError" in result.message


def test_right_answer_reports_its_error_and_result_is_truthy():
    result = ex.check("ch4-ex-closed-form", closed_form)
    assert result and result.error < 1e-8
    assert f"{result.error:.1e}" in result.message
    assert not ex.check("ch4-ex-closed-form", _closed_no_target)


def test_checks_leave_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ex.check("ch5-ex-my-vjp", my_vjp)
    assert torch.equal(torch.rand(3), expected)


def test_checks_are_independent_of_the_answer_shape_convention():
    # λ(t0) as a row (1, d) is the same answer as a 1-D tensor
    def as_row(theta, z0, y, t0, t1):
        g, lam0 = closed_form(theta, z0, y, t0, t1)
        return g, lam0[None, :]

    assert ex.check("ch4-ex-closed-form", as_row).status == "right"


# ----------------------------------------------------------------------------- packaging and lab
def test_wheel_ships_the_exercises_subpackage(tmp_path):
    # build from a copy: setuptools writes build/ and *.egg-info beside the sources
    src = tmp_path / "src"
    shutil.copytree(ROOT / "helpers", src / "helpers",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps",
                             "--no-build-isolation", "-q", "-w", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("helpers-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.name for p in (ROOT / "helpers" / "exercises").glob("*.py")}
    assert {"__init__.py", "_core.py", "ch03.py", "ch06.py"} <= modules
    for m in modules:
        assert f"helpers/exercises/{m}" in names, f"{m} missing from the wheel"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_lab_serves_the_chapter_notebooks(tmp_path):
    port, token = _free_port(), "c1-test-token"
    env = dict(os.environ, RUN_NO_INSTALL="1", JUPYTER_RUNTIME_DIR=str(tmp_path))
    proc = subprocess.Popen(
        [str(ROOT / "run"), "lab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", "--ServerApp.port_retries=0"]
        + (["--allow-root"] if os.geteuid() == 0 else []),  # CI containers run as root
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/api/contents/book/03_lagrangian.ipynb?token={token}"
        deadline, body, last = time.monotonic() + 90, None, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    body = json.loads(response.read())
                break
            except OSError as exc:
                last = exc
                time.sleep(1)
        assert body is not None, f"no answer from JupyterLab ({last}); exit code {proc.poll()}"
        assert body["type"] == "notebook" and body["path"] == "book/03_lagrangian.ipynb"
        assert body["content"]["metadata"]["kernelspec"]["name"] == "python3"
        specs = f"http://127.0.0.1:{port}/api/kernelspecs?token={token}"
        with urllib.request.urlopen(specs, timeout=5) as response:
            kernels = json.loads(response.read())
        assert "python3" in kernels["kernelspecs"]
        # the page ./run lab opens: the book's folder in JupyterLab's file browser
        lab = f"http://127.0.0.1:{port}/lab/tree/book?token={token}"
        with urllib.request.urlopen(lab, timeout=10) as response:
            assert response.status == 200 and b"JupyterLab" in response.read()
    finally:
        try:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, 9)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
