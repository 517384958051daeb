"""Runge–Kutta methods as data.

Each method is a :class:`ButcherTableau`: the nodes ``c``, the stage matrix ``a``, the solution
weights ``b`` and, for adaptive pairs, the weights ``b_err`` of the embedded error estimate
(``b - b_hat``). One generic stepper (:mod:`helpers.runge_kutta`) runs all of them. A tableau is
checked when it is built, so a typo in a coefficient fails at import, not as a wrong answer.

Introduced in the chapter "Neural ODEs and the forward pass".
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction as F
from typing import Optional, Tuple

_TOL = 1e-12


@dataclass(frozen=True)
class ButcherTableau:
    """The coefficients of an explicit Runge–Kutta method.

    **Arguments:**

    - `name`: the method's name, as passed to ``odeint(method=...)``.
    - `c`: the stage times, as fractions of the step.
    - `a`: the strictly lower-triangular stage matrix, one row per stage.
    - `b`: the weights that form the new state.
    - `order`: the order of the solution given by ``b``.
    - `b_err`: for adaptive pairs, ``b - b_hat``, the weights of the local error estimate.
    - `error_order`: the order of the embedded solution ``b_hat`` (sets the step-size exponent).
    - `fsal`: first same as last: the last stage is evaluated at the new state, so it is the
      next step's first stage and costs nothing.
    - `dense`: which dense-output formula interpolates inside a step (``"hermite"`` or
      ``"dopri5"``); ``None`` for fixed-step methods, which step onto every output time.
    """

    name: str
    c: Tuple[float, ...]
    a: Tuple[Tuple[float, ...], ...]
    b: Tuple[float, ...]
    order: int
    b_err: Optional[Tuple[float, ...]] = None
    error_order: Optional[int] = None
    fsal: bool = False
    dense: Optional[str] = None

    def __post_init__(self):
        s = len(self.c)
        if len(self.a) != s or len(self.b) != s:
            raise ValueError(f"{self.name}: c, a and b must all have {s} stages")
        for i, row in enumerate(self.a):
            if len(row) != i:
                raise ValueError(f"{self.name}: row {i} of a must have {i} entries (explicit method)")
            if abs(sum(row) - self.c[i]) > _TOL:
                raise ValueError(f"{self.name}: row {i} of a sums to {sum(row)}, not c[{i}]={self.c[i]}")
        if abs(sum(self.b) - 1.0) > _TOL:
            raise ValueError(f"{self.name}: the weights b sum to {sum(self.b)}, not 1")
        if self.b_err is not None:
            if len(self.b_err) != s:
                raise ValueError(f"{self.name}: b_err must have {s} entries")
            if abs(sum(self.b_err)) > _TOL:
                raise ValueError(f"{self.name}: the error weights b_err sum to {sum(self.b_err)}, not 0")
            if self.error_order is None:
                raise ValueError(f"{self.name}: an adaptive pair needs error_order")
        if self.fsal and (self.c[-1] != 1.0 or any(abs(x - y) > _TOL for x, y in zip(self.a[-1], self.b))):
            raise ValueError(f"{self.name}: an FSAL method's last stage must be its solution")

    @property
    def adaptive(self) -> bool:
        """Whether the method carries an error estimate and so can choose its own steps."""
        return self.b_err is not None

    @property
    def stages(self) -> int:
        return len(self.c)


def _floats(*xs):
    return tuple(float(x) for x in xs)


def _tableau(name, c, a, b, order, b_hat=None, error_order=None, fsal=False, dense=None):
    b_err = None if b_hat is None else _floats(*(x - y for x, y in zip(b, b_hat)))
    return ButcherTableau(
        name=name,
        c=_floats(*c),
        a=tuple(_floats(*row) for row in a),
        b=_floats(*b),
        order=order,
        b_err=b_err,
        error_order=error_order,
        fsal=fsal,
        dense=dense,
    )


EULER = _tableau("euler", c=[0], a=[[]], b=[1], order=1)

MIDPOINT = _tableau("midpoint", c=[0, F(1, 2)], a=[[], [F(1, 2)]], b=[0, 1], order=2)

RK4 = _tableau(
    "rk4",
    c=[0, F(1, 2), F(1, 2), 1],
    a=[[], [F(1, 2)], [0, F(1, 2)], [0, 0, 1]],
    b=[F(1, 6), F(1, 3), F(1, 3), F(1, 6)],
    order=4,
)

# Bogacki–Shampine 3(2): third-order solution, second-order estimate, FSAL.
BOSH3 = _tableau(
    "bosh3",
    c=[0, F(1, 2), F(3, 4), 1],
    a=[[], [F(1, 2)], [0, F(3, 4)], [F(2, 9), F(1, 3), F(4, 9)]],
    b=[F(2, 9), F(1, 3), F(4, 9), 0],
    b_hat=[F(7, 24), F(1, 4), F(1, 3), F(1, 8)],
    order=3,
    error_order=2,
    fsal=True,
    dense="hermite",
)

# Dormand–Prince 5(4): fifth-order solution, fourth-order estimate, FSAL.
DOPRI5 = _tableau(
    "dopri5",
    c=[0, F(1, 5), F(3, 10), F(4, 5), F(8, 9), 1, 1],
    a=[
        [],
        [F(1, 5)],
        [F(3, 40), F(9, 40)],
        [F(44, 45), F(-56, 15), F(32, 9)],
        [F(19372, 6561), F(-25360, 2187), F(64448, 6561), F(-212, 729)],
        [F(9017, 3168), F(-355, 33), F(46732, 5247), F(49, 176), F(-5103, 18656)],
        [F(35, 384), 0, F(500, 1113), F(125, 192), F(-2187, 6784), F(11, 84)],
    ],
    b=[F(35, 384), 0, F(500, 1113), F(125, 192), F(-2187, 6784), F(11, 84), 0],
    b_hat=[F(5179, 57600), 0, F(7571, 16695), F(393, 640), F(-92097, 339200), F(187, 2100), F(1, 40)],
    order=5,
    error_order=4,
    fsal=True,
    dense="dopri5",
)

# Coefficients of the fourth-order continuous extension of DOPRI5 (Hairer, Nørsett & Wanner,
# Solving ODEs I, section II.6), used by helpers.interpolation.
DOPRI5_DENSE = _floats(
    F(-12715105075, 11282082432), 0, F(87487479700, 32700410799), F(-10690763975, 1880347072),
    F(701980252875, 199316789632), F(-1453857185, 822651844), F(69997945, 29380423),
)

METHODS = {tab.name: tab for tab in (EULER, MIDPOINT, RK4, BOSH3, DOPRI5)}
