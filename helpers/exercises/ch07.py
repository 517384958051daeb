"""Self-checking exercises of the chapter "Training a Neural ODE with the adjoint".

- ``ch7-ex-l1``: ``my_jumps(prediction, targets)`` returns ``(for the MSE, for the MAE)``, the
  jumps ∂L/∂z(t_i) that the adjoint adds to λ for the mean squared and the mean absolute error
  of a mini-batch, each shaped like ``prediction`` (window, batch, d); checked against autograd
  through the two losses;
- ``ch7-q-memory``: multiple choice, what the memory that ``odeint_adjoint`` keeps for the
  backward pass of a training step grows with.
"""
from __future__ import annotations

import torch

from ..training import mse
from ._core import call, choice, compare, exercise, unpack


def _batch(seed: int):
    """A seeded prediction and its targets, shaped (window, batch, d) like a mini-batch."""
    g = torch.Generator().manual_seed(7000 + seed)
    window = int(torch.randint(2, 11, (), generator=g))
    batch = int(torch.randint(1, 21, (), generator=g))
    d = int(torch.randint(1, 4, (), generator=g))
    shape = (window, batch, d)
    prediction = torch.randn(shape, generator=g, dtype=torch.float64)
    targets = torch.randn(shape, generator=g, dtype=torch.float64)
    where = f"case {seed + 1} (window {window}, batch {batch}, d = {d})"
    return prediction, targets, where


def _gradient(loss_fn, prediction, targets):
    z = prediction.clone().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(loss_fn(z, targets), z)
    return grad


def _mae(prediction, targets):
    return (prediction - targets).abs().mean()


@exercise(
    "ch7-ex-l1",
    "The jumps ∂L/∂z(t_i) for the mean squared and the mean absolute error",
    hints=(
        "Each entry of the prediction appears in exactly one term of the mean, so the jump "
        "at one window, time and coordinate is the derivative of that term over the count.",
        "The count is every entry of the prediction: window × batch × d (prediction.numel()). "
        "The derivative of r² is 2r, that of |r| is sign(r), with r = prediction - targets.",
        "Return (2 * r / n, torch.sign(r) / n) with n = prediction.numel(), both shaped like "
        "the prediction.",
    ),
    success="Both jumps agree with autograd through the two losses.",
)
def _l1(answer):
    worst = 0.0
    for seed in range(3):
        prediction, targets, where = _batch(seed)
        want_mse = _gradient(mse, prediction, targets)
        want_mae = _gradient(_mae, prediction, targets)
        out = call(answer, prediction.clone(), targets.clone(), where=where)
        got_mse, got_mae = unpack("the result (MSE jumps, MAE jumps)", out, 2, where)
        worst = max(worst, compare(
            "the MSE jump ∂L/∂z(t_i)", got_mse, want_mse, where=where, tol=1e-10,
            look_at="the derivative of the squared residual, and what the mean divides "
                    "by: every entry, not only the windows."))
        worst = max(worst, compare(
            "the MAE jump ∂L/∂z(t_i)", got_mae, want_mae, where=where, tol=1e-10,
            look_at="the derivative of |r| is the sign of r = prediction - targets, "
                    "divided by the same count as the mean."))
    return worst


choice(
    "ch7-q-memory",
    "What the memory an adjoint training step keeps for backward grows with",
    options={
        "a": "the number of accepted steps of the forward solve",
        "b": "the observation times per window, times the batch size",
        "c": "the number of parameters, times the number of steps",
        "d": "nothing: it is the same for every window and batch",
    },
    right="d551f032f418d77a",
    wrong_notes={
        "a": "that is backpropagation through the solver; odeint_adjoint records no "
             "graph of its steps.",
        "c": "the parameters live in the model, once; the backward solve's a_θ exists only "
             "while the backward pass runs.",
        "d": "the forward pass returns states, and the loss and the backward pass need "
             "them; how many are there?",
    },
    hints=(
        "Ask what odeint_adjoint's forward pass hands to its backward pass, and what the "
        "loss keeps.",
        "The backward solve rebuilds z between observation times but re-anchors it to the "
        "stored state at each of them.",
        "The output is the state at every observation time of every window of the batch.",
    ),
    success="The adjoint keeps the outputs, not the steps: window × batch × d numbers "
            "(twice, with the loss's residual).",
)
