"""Self-checking exercises of the chapter "Choosing a gradient method, by measurement": the
stiffness rate that bounds an explicit solver's steps, and which method to choose.

- ``ch12-ex-stiff-rate``: ``stiff_rate(func, t, z)`` returns the fastest decay rate of the
  field linearised at ``(t, z)``: the largest ``-Re μ`` over the eigenvalues ``μ`` of the
  ``d × d`` Jacobian ∂f/∂z (0 when no eigenvalue has a negative real part), for a single
  state ``z`` of shape ``(d,)``; checked against the eigenvalues of the Jacobian that
  ``torch.autograd.functional.jacobian`` builds;
- ``ch12-q-choose``: a multiple-choice question on which gradient method a large, stiff,
  memory-bound neural ODE should use.
"""
from __future__ import annotations

import torch

from ..models import MLP
from ..problems import LinearODE
from ._core import call, choice, compare, exercise


def _cases():
    """(func, t, z, where): a linear field with a rotating and a fast mode, and a network."""
    g = torch.Generator().manual_seed(12)
    # eigenvalues -1 ± 30i and -25, in a random basis
    block = torch.tensor([[-1.0, 30.0, 0.0], [-30.0, -1.0, 0.0], [0.0, 0.0, -25.0]],
                         dtype=torch.float64)
    basis = torch.eye(3, dtype=torch.float64) + 0.3 * torch.randn(3, 3, generator=g,
                                                                    dtype=torch.float64)
    A = basis @ block @ torch.linalg.inv(basis)
    z = torch.randn(3, generator=g, dtype=torch.float64)
    yield (LinearODE(A), torch.tensor(0.0, dtype=torch.float64), z,
           "case 1 (a linear field dz/dt = A z, d = 3, at a random z)")
    torch.manual_seed(1201)
    net = MLP((3, 16, 3), dtype=torch.float64)
    with torch.no_grad():
        net.net[2].weight.mul_(4.0)
    z = torch.randn(3, generator=g, dtype=torch.float64)
    yield (net, torch.tensor(0.5, dtype=torch.float64), z,
           "case 2 (a tanh network 3-16-3 at a random z, t = 0.5)")


def reference_rate(func, t, z) -> torch.Tensor:
    """The largest -Re μ over the eigenvalues μ of ∂f/∂z at (t, z), at least 0."""
    jac = torch.autograd.functional.jacobian(lambda y: func(t, y), z)
    decay = -torch.linalg.eigvals(jac).real
    return torch.clamp(decay.max(), min=0.0)


@exercise(
    "ch12-ex-stiff-rate",
    "The stiffness rate of a field at a state",
    hints=(
        "Linearise: near (t, z) the field acts like its Jacobian ∂f/∂z, a d × d matrix "
        "(torch.autograd.functional.jacobian builds it).",
        "A mode with eigenvalue μ decays like exp(Re μ · t); the imaginary part only "
        "rotates it, so only the real parts matter.",
        "Return the largest -Re μ over the eigenvalues (torch.linalg.eigvals), and 0 if "
        "every real part is non-negative; not the largest |μ|, nor a singular value.",
    ),
    success="Your rate matches the fastest decay of the linearised field; an explicit "
            "method needs steps below (its stability bound) / rate.",
)
def _stiff_rate(answer):
    worst = 0.0
    for func, t, z, where in _cases():
        want = reference_rate(func, t, z)
        got = call(answer, func, t, z.clone(), where=where)
        worst = max(worst, compare(
            "the stiffness rate", got, want, where=where, tol=1e-8,
            look_at="the eigenvalues of ∂f/∂z at (t, z), their real parts only, and "
                    "the sign (a decay rate is positive)."))
    return worst


choice(
    "ch12-q-choose",
    "Which gradient method for a large, stiff, memory-bound neural ODE",
    options={
        "a": "forward sensitivity: no backward solve at all, so nothing to go unstable",
        "b": "backpropagation through the solver: the exact gradient of the computed loss",
        "c": "the checkpointed adjoint",
        "d": "the backsolve adjoint with rtol and atol a hundred times smaller",
    },
    right="ed96b0989b5292c4",
    wrong_notes={
        "a": "its state has d × p entries: with 50,000 parameters each evaluation costs "
             "thousands of times what one adjoint step does.",
        "b": "its graph grows with the 2,000 steps and the batch, and memory is the limit.",
        "d": "the information that the contraction squeezed out of z(t1) is gone; a "
             "tighter tolerance only moves where the reconstruction fails.",
    },
    hints=(
        "Rule out what the memory limit forbids, then what the parameter count forbids.",
        "Of the adjoints, which one does not rebuild z over the whole interval?",
        "Re-anchoring z at stored states bounds the growth of its error to one segment.",
    ),
    success="Checkpoints keep memory at K states and bound the backward amplification; the "
            "interpolating adjoint would be stable too, but it stores every step.",
)
