"""Self-checking exercises of the chapter "The problem".

- ``ch2-q-memory``: multiple choice, how the memory of backpropagation through the solver grows
  with the number of steps;
- ``ch2-ex-bytes``: ``bytes_per_step(B, widths, method, dtype)``, the reader's count of the
  bytes a fixed-step solve keeps per step for a tanh MLP, checked against the slope measured
  with :func:`helpers.memory.graph_memory`;
- ``ch2-ex-my-sens``: ``forward_sens(func, z0, t0, t1, steps)``, the reader's
  z(t1) and S(t1) = dz(t1)/dθ from the forward sensitivity equation solved with RK4, checked
  against autograd through :func:`helpers.odeint` on the same steps.
"""
from __future__ import annotations

import torch

from ..memory import graph_memory
from ..models import MLP
from ..odeint import odeint
from ..problems import TimeDependentODE
from ._core import call, choice, compare, exercise, unpack

F64 = torch.float64

choice(
    "ch2-q-memory",
    "How the memory of backpropagation through the solver grows with the steps",
    options={
        "a": "it does not grow: a constant, whatever the number of steps N",
        "b": "in proportion to N",
        "c": "in proportion to N²",
        "d": "in proportion to log N",
    },
    right="97aa5156552b3e47",
    wrong_notes={
        "a": "that is the adjoint method's promise, not backpropagation's: what does autograd "
             "keep from each step for the backward pass?",
        "c": "each step's saved values are needed once; nothing pairs every step with every "
             "other.",
        "d": "checkpointing schemes can trade time for memory, but plain backpropagation "
             "keeps every step's values.",
    },
    hints=(
        "Reverse mode needs the intermediate values of the forward pass.",
        "Every solver step adds its stages to the graph, and none is freed before the "
        "backward pass.",
        "Each step costs the same amount of memory, so count the steps.",
    ),
    success="Every step keeps its intermediate values for the backward pass.",
)


# widths, batch, method, dtype: each case changes one thing the count depends on
BYTES_CASES = (
    ((2, 16, 2), 32, "rk4", F64),
    ((3, 8, 3), 5, "rk4", torch.float32),
    ((2, 12, 2), 7, "midpoint", F64),
    ((3, 5, 4, 3), 6, "heun3", F64),
    ((4, 6, 4), 3, "euler", torch.float32),
)


def measured_bytes_per_step(widths, B, method, dtype, solve=odeint) -> torch.Tensor:
    """The slope of the graph memory of ``solve`` between 2 and 4 steps of ``method``, measured.

    Also used by the appendix's exercise, with ``solve=odeint_adjoint``.
    """
    torch.manual_seed(6300)
    field = MLP(widths, dtype=dtype)
    z0 = torch.randn(B, widths[0], dtype=dtype)
    t = torch.tensor([0.0, 1.0], dtype=dtype)

    def forward_loss(n):
        z1 = solve(field, z0, t, method=method, options=dict(step_size=1 / n))[-1]
        return (z1 ** 2).sum()

    kept = [graph_memory(forward_loss, n) for n in (2, 4)]
    return torch.tensor((kept[1] - kept[0]) / 2, dtype=F64)


@exercise(
    "ch2-ex-bytes",
    "The bytes backpropagation keeps per solver step",
    hints=(
        "Count per evaluation of the network, then multiply by the evaluations per step: "
        "METHODS[method].stages from helpers.tableaus.",
        "Each Linear layer saves its input (B rows of its input width); a tanh saves its "
        "output, which is also the next layer's input: one storage, counted once. The "
        "weights are the same tensors at every step and do not add per step.",
        "Per evaluation: B × (sum of every width except the last) numbers; one number "
        "takes torch.empty((), dtype=dtype).element_size() bytes.",
    ),
    success="Your count matches the slope measured with helpers.memory.graph_memory.",
)
def _bytes(answer):
    worst = 0.0
    for n, (widths, B, method, dtype) in enumerate(BYTES_CASES):
        kind = str(dtype).replace("torch.", "")
        where = f"case {n + 1} (MLP{widths}, B = {B}, {method}, {kind})"
        expected = measured_bytes_per_step(widths, B, method, dtype)
        out = call(answer, B, widths, method, dtype, where=where)
        looks = {
            0: "what each evaluation saves: the input of every Linear layer.",
            1: "the cases in float64 passed: how many bytes does one float32 number take?",
            2: "the rk4 cases passed: how many evaluations of f does this method make per "
               "step?",
        }
        look_at = looks.get(n, "a deeper network or another method: count every Linear "
                               "layer's input, and the stages of the method.")
        worst = max(worst, compare("bytes per step", out, expected, where=where, tol=1e-12,
                                   look_at=look_at))
    return worst


def _sensitivity_cases():
    """(func, z0, t0, t1, steps, where): two MLPs and a field that depends on t."""
    for n in range(3):
        g = torch.Generator().manual_seed(6400 + n)
        torch.manual_seed(6400 + n)
        if n == 1:
            a = round(-0.5 + 0.5 * float(torch.rand((), generator=g, dtype=F64)), 2)
            b = round(0.5 + float(torch.rand((), generator=g, dtype=F64)), 2)
            func, d = TimeDependentODE(a=a, b=b, dtype=F64), 3
            what = f"ż = (a + b cos t) z, a = {a:.2f}, b = {b:.2f}, p = 2"
        else:
            d, hidden = 2 + n // 2, 5 - n // 2
            func = MLP((d, hidden, d), dtype=F64)
            p = sum(w.numel() for w in func.parameters())
            what = f"MLP({d}, {hidden}, {d}), p = {p}"
        z0 = torch.randn(d, generator=g, dtype=F64)
        t0 = round(-0.5 + float(torch.rand((), generator=g, dtype=F64)), 2)
        t1 = round(t0 + 0.5 + float(torch.rand((), generator=g, dtype=F64)), 2)
        where = f"case {n + 1} ({what}, t0 = {t0:.2f}, t1 = {t1:.2f}, 10 steps)"
        yield func, z0, t0, t1, 10, where


def _autograd_sensitivity(func, z0, t0, t1, steps):
    """z(t1) and the Jacobian dz(t1)/dθ (columns in the order of func.parameters(), each
    parameter flattened), by backpropagation through helpers.odeint with the same RK4 steps."""
    params = [w for w in func.parameters() if w.requires_grad]
    t = torch.tensor([t0, t1], dtype=F64)
    z1 = odeint(func, z0, t, method="rk4", options=dict(step_size=(t1 - t0) / steps))[-1]
    rows = []
    for i in range(z1.numel()):
        grads = torch.autograd.grad(z1[i], params, retain_graph=True)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return z1.detach(), torch.stack(rows)


@exercise(
    "ch2-ex-my-sens",
    "Your forward sensitivities S(t1) = dz(t1)/dθ",
    hints=(
        "Carry z (d numbers) and S (a d × p matrix) as one flat state, start it at "
        "(z0, 0), and hand a right-hand side for both to helpers.odeint with method='rk4' "
        "and step_size (t1 - t0) / steps.",
        "The right-hand side is f(z) for z and (∂f/∂z) S + ∂f/∂θ for S. Row i of both "
        "Jacobians is one reverse pass: torch.autograd.grad(out[i], [z, *params], "
        "retain_graph=True), with z a fresh leaf that requires a gradient.",
        "Flatten each parameter's gradient and concatenate them in the order of "
        "func.parameters(): stacked over i that is ∂f/∂θ, d × p. Pass t on to the field: "
        "it may depend on it.",
    ),
    success="z(t1) and S(t1) agree with autograd through helpers.odeint on the same RK4 "
            "steps.",
)
def _my_sensitivity(answer):
    worst = 0.0
    for func, z0, t0, t1, steps, where in _sensitivity_cases():
        z1, S1 = _autograd_sensitivity(func, z0, t0, t1, steps)
        out = call(answer, func, z0.clone(), t0, t1, steps, where=where)
        got_z1, got_S1 = unpack("the result (z(t1), S(t1))", out, 2, where)
        worst = max(worst, compare(
            "z(t1)", got_z1, z1, where=where, tol=1e-8, vector=True,
            look_at="the first d numbers of the state solve ż = f with rk4 and the given "
                    "number of steps."))
        worst = max(worst, compare(
            "S(t1) = dz(t1)/dθ", got_S1, S1, where=where, tol=1e-8,
            look_at="Ṡ = (∂f/∂z) S + ∂f/∂θ with S(t0) = 0, d × p, the columns in the order "
                    "of func.parameters(); solved with the same rk4 steps as z."))
    return worst
