"""Self-checking exercises of the chapter "Vector–Jacobian products".

``ch5-ex-my-vjp`` is the first step of the reader's own adjoint, continued in ``ch06`` (the
augmented dynamics and the fixed-step solve) and ``ch09`` (dL/dt0).
"""
from __future__ import annotations

import torch
from torch.func import jacrev

from ..models import MLP
from ..problems import TimeDependentODE
from ..vjp import vjp_via_jacobian
from ._core import call, choice, compare, exercise, unpack
from .reference import adjoint_reference

NAMES = ("W1", "b1", "W2", "b2")


def _mlp_case(seed: int):
    g = torch.Generator().manual_seed(2000 + seed)
    d = int(torch.randint(2, 5, (), generator=g))
    hidden = int(torch.randint(5, 9, (), generator=g))
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    W1, b1, W2, b2 = r(hidden, d), r(hidden), r(d, hidden), r(d)
    return (W1, b1, W2, b2), r(d), r(d), f"case {seed + 1} (d = {d}, hidden width {hidden})"


def _mlp(z, W1, b1, W2, b2):
    return W2 @ torch.tanh(W1 @ z + b1) + b2


@exercise(
    "ch5-ex-byhand",
    "The VJPs of a one-hidden-layer tanh MLP, by hand",
    hints=(
        "Go backward through the layers, (ch5-chain): first μ2 = λ W2, then through tanh, "
        "then through W1.",
        "tanh acts elementwise: with h = tanh(W1 z + b1) its Jacobian is diagonal, "
        "1 - h², so μ = μ2 * (1 - h**2).",
        "Each weight receives an outer product shaped like it: W2 gets λᵀ hᵀ "
        "(torch.outer(lam, h)), W1 gets μᵀ zᵀ; each bias gets the row arriving at its layer.",
    ),
    success="All five products agree with λ times Jacobians built by torch.func.jacrev.",
)
def _byhand(answer):
    worst = 0.0
    for seed in range(3):
        weights, z, lam, where = _mlp_case(seed)
        J_z, *J_w = jacrev(_mlp, argnums=(0, 1, 2, 3, 4))(z, *weights)
        want_z = lam @ J_z
        want_w = [torch.tensordot(lam, J, dims=1) for J in J_w]
        out = call(answer, *(w.clone() for w in weights), z.clone(), lam.clone(),
                   where=where)
        got_z, got_w = unpack("the result (λ ∂f/∂z, parameter products)", out, 2, where)
        got_w = unpack("the parameter products", got_w, 4, where)
        worst = max(worst, compare(
            "λ ∂f/∂z", got_z, want_z, where=where, tol=1e-10, vector=True,
            look_at="the row passes through W2, then tanh's derivative 1 - h², then W1."))
        looks = {
            "W1": "μᵀ zᵀ, with μ the row after the tanh layer, shaped like W1.",
            "b1": "the row arriving at the first layer, after tanh's derivative.",
            "W2": "λᵀ hᵀ with h the hidden activation, shaped like W2.",
            "b2": "the row arriving at the output layer.",
        }
        for name, got, want in zip(NAMES, got_w, want_w):
            worst = max(worst, compare(f"λ ∂f/∂{name}", got, want, where=where, tol=1e-10,
                                       look_at=looks[name]))
    return worst


def _vjp_cases():
    """Vector fields and inputs: an MLP with one state, with a batch, a t-dependent field."""
    for seed in range(3):
        g = torch.Generator().manual_seed(3000 + seed)
        torch.manual_seed(3000 + seed)
        if seed == 2:
            func = TimeDependentODE(a=-0.4, b=0.9, dtype=torch.float64)
            shape, what = (3,), "TimeDependentODE, one state of d = 3"
        else:
            d = 2 + seed
            func = MLP((d, 6, d), dtype=torch.float64)
            shape = (d,) if seed == 0 else (4, d)
            what = f"MLP({d}, 6, {d}), z of shape {shape}"
        t = torch.rand((), generator=g, dtype=torch.float64)
        z = torch.randn(shape, generator=g, dtype=torch.float64)
        lam = torch.randn(shape, generator=g, dtype=torch.float64)
        yield func, t, z, lam, f"case {seed + 1} ({what})"


def check_vjp_function(answer, name: str = "your VJP") -> float:
    """Compare ``answer(func, t, z, lam)`` with λ times the explicit Jacobians; return the error."""
    worst = 0.0
    for func, t, z, lam, where in _vjp_cases():
        want_z, want_theta = vjp_via_jacobian(func, t, z, lam)
        out = call(answer, func, t.clone(), z.clone(), lam.clone(), where=where, name=name)
        got_z, got_theta = unpack("the result (λ ∂f/∂z, parameter products)", out, 2, where)
        got_theta = unpack("the parameter products", got_theta, len(want_theta), where)
        worst = max(worst, compare(
            "λ ∂f/∂z", got_z, want_z, where=where, tol=1e-10,
            look_at="grad_outputs=lam gives λ ∂f/∂z directly; no transpose, no minus sign."))
        for k, (got, want) in enumerate(zip(got_theta, want_theta)):
            worst = max(worst, compare(
                f"λ ∂f/∂θ for parameter {k}", got, want, where=where, tol=1e-10,
                look_at="one tensor per parameter, in the order of func.parameters(); with "
                        "a batch, summed over its rows (autograd does that for you)."))
    return worst


@exercise(
    "ch5-ex-my-vjp",
    "Your own VJP: λ ∂f/∂z and λ ∂f/∂θ in one reverse pass",
    hints=(
        "Evaluate out = func(t, z) with z detached and requiring a gradient, inside "
        "torch.enable_grad().",
        "torch.autograd.grad(out, (z, *params), grad_outputs=lam) returns both products; "
        "params = [p for p in func.parameters() if p.requires_grad].",
        "Return (grads[0], tuple(grads[1:])). A parameter the field does not use needs "
        "allow_unused=True and a zero tensor in its place.",
    ),
    success="Your VJP matches λ times the explicit Jacobians, and an RK4 adjoint built on it "
            "matches helpers.odeint_adjoint.",
)
def _my_vjp(answer):
    worst = check_vjp_function(answer)

    def dynamics(func):
        def rhs(t, z, lam):
            vz, vtheta = answer(func, t, z, lam)
            return func(t, z), -vz, [-v for v in vtheta]
        return rhs

    worst = max(worst, adjoint_reference(
        dynamics, "an RK4 adjoint that uses your VJP",
        "your VJP passed the Jacobian checks; look at how it treats z and λ "
        "that come without a graph."))
    return worst


choice(
    "ch5-ex-jvp",
    "How many JVPs does λ ∂f/∂θ take?",
    options={"a": "1", "b": "d, the state dimension", "c": "p, the number of parameters",
             "d": "d × p"},
    right="3c2e617a871e851c",
    wrong_notes={
        "a": "one JVP gives one column of the Jacobian (the derivative along one input "
             "direction), not a row.",
        "b": "d JVPs give λ ∂f/∂z; ask how many input directions θ has.",
        "d": "you need one column per input direction, not one entry per Jacobian entry.",
    },
    hints=(
        "A JVP with the unit column e_j gives column j of the Jacobian.",
        "For λ ∂f/∂θ you need every column of ∂f/∂θ; how many columns does it have?",
        "∂f/∂θ is d × p.",
    ),
    success="Forward mode pays per input direction; reverse mode one pass for all.",
)
