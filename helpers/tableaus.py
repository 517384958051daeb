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
      ``"dopri5"``); ``None`` for methods that step onto every output time instead (the
      fixed-step methods, and dopri8).

    Introduced in the chapter "Neural ODEs and the forward pass".
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

# Heun's second-order method (the explicit trapezoidal rule) and Heun's third-order method
# (Hairer, Nørsett & Wanner, Solving ODEs I, Table II.1.1).
HEUN2 = _tableau("heun2", c=[0, 1], a=[[], [1]], b=[F(1, 2), F(1, 2)], order=2)

HEUN3 = _tableau(
    "heun3",
    c=[0, F(1, 3), F(2, 3)],
    a=[[], [F(1, 3)], [0, F(2, 3)]],
    b=[F(1, 4), 0, F(3, 4)],
    order=3,
)

# Heun's method with Euler's as the embedded estimate: second order, first-order estimate. The
# third stage, f at the new state, makes it FSAL: it is the next step's first stage, and the
# Hermite interpolant's end slope. (torchdiffeq's adaptive_heun reuses f at Euler's predictor
# y0 + h f0 instead, one evaluation fewer per step, a different method at second order.)
ADAPTIVE_HEUN = _tableau(
    "adaptive_heun",
    c=[0, 1, 1],
    a=[[], [1], [F(1, 2), F(1, 2)]],
    b=[F(1, 2), F(1, 2), 0],
    b_hat=[1, 0, 0],
    order=2,
    error_order=1,
    fsal=True,
    dense="hermite",
)

# Fehlberg's RK1(2) pair (Fehlberg 1969, NASA TR R-315; Hairer, Nørsett & Wanner, Solving ODEs I,
# section II.4): stages at 0, 1/2, 1 with the weights 1/256, 255/256 of the first-order formula.
# As in torchdiffeq the second-order formula is the one propagated (local extrapolation), with the
# first-order one as the estimate; a fourth stage, f at the new state, makes it FSAL.
FEHLBERG2 = _tableau(
    "fehlberg2",
    c=[0, F(1, 2), 1, 1],
    a=[[], [F(1, 2)], [F(1, 256), F(255, 256)], [F(1, 512), F(255, 256), F(1, 512)]],
    b=[F(1, 512), F(255, 256), F(1, 512), 0],
    b_hat=[F(1, 256), F(255, 256), 0, 0],
    order=2,
    error_order=1,
    fsal=True,
    dense="hermite",
)

# Prince & Dormand's RK8(7)13M (Prince & Dormand 1981, "High order embedded Runge-Kutta
# formulae", J. Comput. Appl. Math. 7, Table 2): thirteen stages, eighth-order solution with a
# seventh-order estimate. The published coefficients are rational approximations (about 18
# digits) to the exact ones, so the order conditions hold to about 1e-15, not exactly. A
# fourteenth stage, f at the new state, makes it FSAL. No continuous extension was published
# with it, and the cubic Hermite interpolant is far too coarse for its long steps (1e-2 off
# where the steps themselves are good to 3e-6), so it has no dense output: its steps end on
# every requested time, which keeps eighth order at each output.
_DOPRI8_A = [
    [],
    [F(1, 18)],
    [F(1, 48), F(1, 16)],
    [F(1, 32), 0, F(3, 32)],
    [F(5, 16), 0, F(-75, 64), F(75, 64)],
    [F(3, 80), 0, 0, F(3, 16), F(3, 20)],
    [F(29443841, 614563906), 0, 0, F(77736538, 692538347), F(-28693883, 1125000000),
     F(23124283, 1800000000)],
    [F(16016141, 946692911), 0, 0, F(61564180, 158732637), F(22789713, 633445777),
     F(545815736, 2771057229), F(-180193667, 1043307555)],
    [F(39632708, 573591083), 0, 0, F(-433636366, 683701615), F(-421739975, 2616292301),
     F(100302831, 723423059), F(790204164, 839813087), F(800635310, 3783071287)],
    [F(246121993, 1340847787), 0, 0, F(-37695042795, 15268766246), F(-309121744, 1061227803),
     F(-12992083, 490766935), F(6005943493, 2108947869), F(393006217, 1396673457),
     F(123872331, 1001029789)],
    [F(-1028468189, 846180014), 0, 0, F(8478235783, 508512852), F(1311729495, 1432422823),
     F(-10304129995, 1701304382), F(-48777925059, 3047939560), F(15336726248, 1032824649),
     F(-45442868181, 3398467696), F(3065993473, 597172653)],
    [F(185892177, 718116043), 0, 0, F(-3185094517, 667107341), F(-477755414, 1098053517),
     F(-703635378, 230739211), F(5731566787, 1027545527), F(5232866602, 850066563),
     F(-4093664535, 808688257), F(3962137247, 1805957418), F(65686358, 487910083)],
    [F(403863854, 491063109), 0, 0, F(-5068492393, 434740067), F(-411421997, 543043805),
     F(652783627, 914296604), F(11173962825, 925320556), F(-13158990841, 6184727034),
     F(3936647629, 1978049680), F(-160528059, 685178525), F(248638103, 1413531060), 0],
]
_DOPRI8_B = [F(14005451, 335480064), 0, 0, 0, 0, F(-59238493, 1068277825), F(181606767, 758867731),
             F(561292985, 797845732), F(-1041891430, 1371343529), F(760417239, 1151165299),
             F(118820643, 751138087), F(-528747749, 2220607170), F(1, 4)]
_DOPRI8_B_HAT = [F(13451932, 455176623), 0, 0, 0, 0, F(-808719846, 976000145),
                 F(1757004468, 5645159321), F(656045339, 265891186), F(-3867574721, 1518517206),
                 F(465885868, 322736535), F(53011238, 667516719), F(2, 45), 0]
DOPRI8 = _tableau(
    "dopri8",
    c=[0, F(1, 18), F(1, 12), F(1, 8), F(5, 16), F(3, 8), F(59, 400), F(93, 200),
       F(5490023248, 9719169821), F(13, 20), F(1201146811, 1299019798), 1, 1, 1],
    a=_DOPRI8_A + [_DOPRI8_B],
    b=_DOPRI8_B + [0],
    b_hat=_DOPRI8_B_HAT + [0],
    order=8,
    error_order=7,
    fsal=True,
)

METHODS = {tab.name: tab for tab in (EULER, MIDPOINT, RK4, BOSH3, DOPRI5, HEUN2, HEUN3, ADAPTIVE_HEUN,
                                     FEHLBERG2, DOPRI8)}
