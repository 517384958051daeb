"""The Butcher tableaus: consistency, order conditions, embedded estimates and dense output.

The order conditions are checked over all rooted trees (Butcher's theory): a method has order p
when ``Σ_i b_i Φ_i(τ) = 1/γ(τ)`` for every rooted tree τ with at most p nodes. The bushy trees
give the quadrature conditions ``Σ b c^k = 1/(k+1)``, checked on their own as well.
"""
from __future__ import annotations

import math
from functools import lru_cache

import pytest
import torch

import helpers
from helpers import METHODS, ButcherTableau
from helpers.runge_kutta import interpolate

TOL = 1e-12

EXPECTED = {
    # name: (order, stages, adaptive, error_order, fsal, dense)
    "euler": (1, 1, False, None, False, None),
    "midpoint": (2, 2, False, None, False, None),
    "rk4": (4, 4, False, None, False, None),
    "bosh3": (3, 4, True, 2, True, "hermite"),
    "dopri5": (5, 7, True, 4, True, "dopri5"),
    "heun2": (2, 2, False, None, False, None),
    "heun3": (3, 3, False, None, False, None),
    "adaptive_heun": (2, 3, True, 1, True, "hermite"),
    "fehlberg2": (2, 4, True, 1, True, "hermite"),
    "dopri8": (8, 14, True, 7, True, None),
}


# --- rooted trees -------------------------------------------------------------------------
# A tree is the sorted tuple of its children's trees; the single node is ().


def _canon(children) -> tuple:
    return tuple(sorted(children))


def _graft(tree: tuple):
    """Every tree made by adding one leaf to some node of ``tree``."""
    yield _canon(tree + ((),))
    for i, child in enumerate(tree):
        for grown in _graft(child):
            yield _canon(tree[:i] + (grown,) + tree[i + 1:])


@lru_cache(maxsize=None)
def trees(order: int) -> tuple:
    """The rooted trees with exactly ``order`` nodes."""
    if order == 1:
        return ((),)
    return tuple(sorted({g for t in trees(order - 1) for g in _graft(t)}))


def nodes(tree) -> int:
    return 1 + sum(nodes(c) for c in tree)


def gamma(tree) -> int:
    """The density γ(τ): the exact solution's Taylor coefficient of τ is 1/γ(τ)."""
    return nodes(tree) * math.prod(gamma(c) for c in tree)


def stage_weights(tab: ButcherTableau, tree) -> list:
    """Φ_i(τ) for every stage i: the product over the children σ of Σ_j a_ij Φ_j(σ)."""
    s = tab.stages
    phi = [1.0] * s
    for child in tree:
        inner = stage_weights(tab, child)
        for i in range(s):
            phi[i] *= sum(a_ij * inner[j] for j, a_ij in enumerate(tab.a[i]))
    return phi


def tree_residual(weights, tab: ButcherTableau, tree, theta: float = 1.0) -> float:
    """Σ w_i Φ_i(τ) - θ^|τ|/γ(τ)."""
    phi = stage_weights(tab, tree)
    return sum(w * p for w, p in zip(weights, phi)) - theta ** nodes(tree) / gamma(tree)


def satisfied_order(weights, tab: ButcherTableau, max_order: int = 6, theta: float = 1.0) -> int:
    """The largest p such that every tree with at most p nodes is satisfied (up to max_order)."""
    for p in range(1, max_order + 1):
        if any(abs(tree_residual(weights, tab, t, theta)) > TOL for t in trees(p)):
            return p - 1
    return max_order


def test_tree_counts():
    # the number of rooted trees with 1..6 nodes: 1, 1, 2, 4, 9, 20 (OEIS A000081)
    assert [len(trees(p)) for p in range(1, 7)] == [1, 1, 2, 4, 9, 20]
    assert sorted(gamma(t) for t in trees(3)) == [3, 6]


def test_methods_registry():
    assert set(METHODS) == set(EXPECTED)
    for name, tab in METHODS.items():
        assert isinstance(tab, ButcherTableau)
        assert tab.name == name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_tableau_metadata(name):
    tab = METHODS[name]
    order, stages, adaptive, error_order, fsal, dense = EXPECTED[name]
    assert tab.order == order
    assert tab.stages == stages
    assert tab.adaptive is adaptive
    assert tab.error_order == error_order
    assert tab.fsal is fsal
    assert tab.dense == dense


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_consistency_conditions(name):
    """Explicit, rows of a sum to c, b sums to 1, b_err sums to 0, FSAL last row is b."""
    tab = METHODS[name]
    s = tab.stages
    assert len(tab.c) == len(tab.a) == len(tab.b) == s
    assert tab.c[0] == 0.0
    for i, row in enumerate(tab.a):
        assert len(row) == i, "an explicit method has a strictly lower-triangular a"
        assert abs(sum(row) - tab.c[i]) < TOL
    assert abs(sum(tab.b) - 1.0) < TOL
    if tab.adaptive:
        assert len(tab.b_err) == s
        assert abs(sum(tab.b_err)) < TOL
        assert any(abs(e) > TOL for e in tab.b_err), "an error estimate that is identically zero"
    if tab.fsal:
        assert tab.c[-1] == 1.0
        assert all(abs(x - y) < TOL for x, y in zip(tab.a[-1], tab.b))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_quadrature_conditions(name):
    """Σ b c^k = 1/(k+1) for k < order."""
    tab = METHODS[name]
    for k in range(tab.order):
        lhs = sum(b * c ** k for b, c in zip(tab.b, tab.c))
        assert abs(lhs - 1.0 / (k + 1)) < TOL, f"{name}: Σ b c^{k} = {lhs}, not 1/{k + 1}"


@pytest.mark.parametrize("name", ["rk4", "dopri5"])
def test_quadrature_conditions_rk4_dopri5_explicit(name):
    """The acceptance list's condition, written out: Σ b c^k = 1/(k+1) for k = 0..order-1."""
    tab = METHODS[name]
    b = torch.tensor(tab.b, dtype=torch.float64)
    c = torch.tensor(tab.c, dtype=torch.float64)
    ks = torch.arange(tab.order, dtype=torch.float64)
    lhs = (b[None, :] * c[None, :] ** ks[:, None]).sum(dim=1)
    torch.testing.assert_close(lhs, 1.0 / (ks + 1), rtol=0, atol=TOL)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_order_conditions_all_trees(name):
    """b satisfies every tree condition up to the stated order, and fails one of order+1."""
    tab = METHODS[name]
    got = satisfied_order(tab.b, tab, max_order=max(6, tab.order + 1))
    print(f"{name}: stated order {tab.order}, satisfied tree conditions up to order {got}")
    assert got == tab.order


@pytest.mark.parametrize("name", ["bosh3", "dopri5"])
def test_embedded_order(name):
    """The embedded solution b_hat = b - b_err has exactly error_order."""
    tab = METHODS[name]
    b_hat = [b - e for b, e in zip(tab.b, tab.b_err)]
    got = satisfied_order(b_hat, tab)
    print(f"{name}: embedded order {tab.error_order}, satisfied up to {got}")
    assert got == tab.error_order


def _dense_weights(tab: ButcherTableau, theta: float) -> list:
    """b_i(θ) of the continuous extension, read off the linear map ``interpolate`` applies."""
    s = tab.stages
    eye = torch.eye(s, dtype=torch.float64)
    ks = [eye[i] for i in range(s)]
    y0 = torch.zeros(s, dtype=torch.float64)
    y1 = torch.tensor(tab.b, dtype=torch.float64)  # y0 + h Σ b_i k_i with h = 1
    return interpolate(tab, y0, y1, ks, 1.0, theta).tolist()


@pytest.mark.parametrize("name,dense_order", [("bosh3", 3), ("dopri5", 4)])
def test_dense_output_order_conditions(name, dense_order):
    """Σ b_i(θ) Φ_i(τ) = θ^|τ|/γ(τ) for every tree up to the dense order, at several θ."""
    tab = METHODS[name]
    for theta in (0.0, 0.1, 0.3, 0.5, 0.77, 1.0):
        w = _dense_weights(tab, theta)
        for p in range(1, dense_order + 1):
            for tree in trees(p):
                res = tree_residual(w, tab, tree, theta)
                assert abs(res) < 1e-11, f"{name} θ={theta}: tree {tree} residual {res}"
    # the ends of the step are reproduced exactly
    assert all(abs(x) < TOL for x in _dense_weights(tab, 0.0))
    assert all(abs(x - b) < TOL for x, b in zip(_dense_weights(tab, 1.0), tab.b))


def test_fixed_step_method_has_no_dense_output():
    tab = METHODS["rk4"]
    y = torch.zeros(2)
    with pytest.raises(ValueError, match="no dense output"):
        interpolate(tab, y, y, [y] * 4, 0.1, 0.5)


# --- bad tableaus are refused when built ---------------------------------------------------

GOOD = dict(name="ok", c=(0.0, 0.5), a=((), (0.5,)), b=(0.0, 1.0), order=2)


def test_good_tableau_builds():
    tab = ButcherTableau(**GOOD)
    assert tab.stages == 2 and not tab.adaptive


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(c=(0.0, 0.5, 1.0)), "stages"),
        (dict(b=(1.0,)), "stages"),
        (dict(a=((0.0,), (0.5,))), "row 0 of a must have 0 entries"),
        (dict(a=((), (0.5, 0.0))), "row 1 of a must have 1 entries"),
        (dict(a=((), (0.4,))), r"row 1 of a sums to"),
        (dict(b=(0.5, 0.6)), "weights b sum to"),
        (dict(b_err=(0.1,), error_order=1), "b_err must have 2 entries"),
        (dict(b_err=(0.1, 0.1), error_order=1), "b_err sum to"),
        (dict(b_err=(0.1, -0.1)), "needs error_order"),
        (dict(fsal=True), "FSAL"),
    ],
)
def test_bad_tableau_raises(change, match):
    with pytest.raises(ValueError, match=match):
        ButcherTableau(**{**GOOD, **change})


def test_bad_tableau_message_names_the_method():
    with pytest.raises(ValueError, match="^mybad: "):
        ButcherTableau(**{**GOOD, "name": "mybad", "b": (0.2, 0.2)})


def test_tableau_is_immutable():
    with pytest.raises(Exception):
        helpers.METHODS["rk4"].order = 7  # frozen dataclass
