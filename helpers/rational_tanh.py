"""A cheaper float32 tanh for the compiled mode on the CPU: a rational function, put in by a graph pass.

Inductor's vectorised tanh on the CPU goes through an exponential and a division
(``cpp.use_decompose_tanh``); in a whole-solve loop on the book's benchmark problem that tanh
was the largest single gap to XLA, which evaluates tanh as a rational function
(``benchmarks/compiled_breakdown.py`` measures both). This module does the same for the
compiled mode: :class:`RationalTanhPass` rewrites each float32 ``aten.tanh`` of a graph, after
autograd has built it, into

    tanh(x) ≈ x · P(x²) / Q(x²),  x clamped to [-9, 9],  the result clamped to [-1, 1],

with P and Q of degree 4 fitted here (a weighted least-squares fit, iterated towards the
smallest maximum error on [0, 9]; tanh is odd). Beyond |x| = 9 tanh rounds to ±1 in float32.
In float64 the fit's error is 2e-8; evaluated in float32 it is within 3.5e-7 of tanh
everywhere (4e-7 is checked), the size of the error of the exponential form it replaces (both are checked in
tests/test_rational_tanh.py). Derivatives are unaffected: autograd's tanh backward,
``1 - tanh(x)²``, reads the saved output and was built before the pass runs.

float64 graphs keep inductor's tanh (this fit is far from float64's precision), and so does any
graph compiled without the pass: eager code never sees it.

Introduced in the chapter "Training a Neural ODE with the adjoint" (the compiled mode).
"""
from __future__ import annotations

import hashlib
from typing import Any, Optional

import torch

# x · P(x²) / Q(x²), lowest degree first
NUMERATOR = (0.999999906365891, 0.13373204263328078, 0.003486589566645755, 2.0471952118854506e-05,
             1.3184384337946538e-08)
DENOMINATOR = (1.0, 0.4670650113435264, 0.025842008706487316, 0.0003271397729009561, 7.70273081300206e-07)
CLAMP = 9.0


def rational_tanh(x: torch.Tensor) -> torch.Tensor:
    """The approximation itself, in plain tensor operations (what the pass puts in the graph).

    Used in the chapter "Training a Neural ODE with the adjoint" (the compiled mode).
    """
    xc = x.clamp(-CLAMP, CLAMP)
    u = xc * xc
    p = _horner(NUMERATOR, u)
    q = _horner(DENOMINATOR, u)
    return (xc * p / q).clamp(-1.0, 1.0)


def _horner(coefficients, u):
    total = u * coefficients[-1] + coefficients[-2]
    for c in reversed(coefficients[:-2]):
        total = total * u + c
    return total


try:  # torch's hook for graph passes that inductor's caches can key on
    from torch._inductor.custom_graph_pass import CustomGraphPass
except ImportError:  # pragma: no cover - older torch: the compiled mode keeps inductor's tanh
    CustomGraphPass = None


def _aten_rational(graph: torch.fx.Graph, x: torch.fx.Node, meta_val) -> torch.fx.Node:
    """Insert the nodes of :func:`rational_tanh` on ``x``; every one has ``x``'s shape and dtype."""
    aten = torch.ops.aten

    def node(op, *args):
        n = graph.call_function(op, args)
        n.meta["val"] = meta_val
        return n

    # clamp_min/clamp_max: after autograd, aten.clamp is decomposed into these two
    xc = node(aten.clamp_max.default, node(aten.clamp_min.default, x, -CLAMP), CLAMP)
    u = node(aten.mul.Tensor, xc, xc)

    def horner(coefficients):
        total = node(aten.add.Tensor, node(aten.mul.Tensor, u, coefficients[-1]), coefficients[-2])
        for c in reversed(coefficients[:-2]):
            total = node(aten.add.Tensor, node(aten.mul.Tensor, total, u), c)
        return total

    ratio = node(aten.div.Tensor, node(aten.mul.Tensor, xc, horner(NUMERATOR)), horner(DENOMINATOR))
    return node(aten.clamp_max.default, node(aten.clamp_min.default, ratio, -1.0), 1.0)


def rewrite_tanh(graph: torch.fx.Graph) -> int:
    """Replace each float32 ``aten.tanh`` of ``graph`` by the rational form; returns how many.

    Used in the chapter "Training a Neural ODE with the adjoint" (the compiled mode).
    """
    count = 0
    for n in list(graph.nodes):
        if n.op != "call_function" or n.target is not torch.ops.aten.tanh.default:
            continue
        val = n.meta.get("val")
        if not isinstance(val, torch.Tensor) or val.dtype != torch.float32:
            continue
        with graph.inserting_before(n):
            replacement = _aten_rational(graph, n.args[0], val)
        n.replace_all_uses_with(replacement)
        graph.erase_node(n)
        count += 1
    return count


if CustomGraphPass is not None:
    class RationalTanhPass(CustomGraphPass):
        """Inductor's ``post_grad_custom_pre_pass``: :func:`rewrite_tanh` on each graph.

        Its ``uuid`` names the coefficients, so that inductor's on-disk cache tells graphs
        compiled with the pass from graphs compiled without it.

        Used in the chapter "Training a Neural ODE with the adjoint" (the compiled mode).
        """

        def __call__(self, graph: torch.fx.Graph) -> None:
            rewrite_tanh(graph)

        def uuid(self) -> Optional[Any]:
            key = repr(("helpers.rational_tanh", NUMERATOR, DENOMINATOR, CLAMP))
            return hashlib.sha256(key.encode()).hexdigest()
else:  # pragma: no cover
    RationalTanhPass = None
