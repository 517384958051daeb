"""The machinery behind the self-checking exercises: registry, results, comparisons.

Nothing here knows about a particular exercise; the chapter modules (``ch03.py``, ...) register
their checkers with :func:`exercise` and :func:`choice`, and ``helpers.exercises`` exposes
:func:`check` and :func:`hint`.
"""
from __future__ import annotations

import hashlib
import re
import textwrap
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence

import torch

STATUSES = ("not attempted", "wrong", "right")


@dataclass(frozen=True)
class CheckResult:
    """What :func:`check` found: ``status`` is one of ``STATUSES``.

    ``error`` is the largest relative error over every quantity and input when the answer is
    right, the error of the first quantity that disagrees when it is wrong, and ``None`` when
    there is no number to report (not attempted, a multiple-choice answer, a wrong shape).
    """

    label: str
    status: str
    message: str
    error: Optional[float] = None

    def __bool__(self) -> bool:
        return self.status == "right"

    def __repr__(self) -> str:
        err = "" if self.error is None else f", error {self.error:.1e}"
        return f"<check {self.label}: {self.status}{err}>"

    def _ipython_display_(self) -> None:
        # check() has already printed the message; showing the object again would repeat it
        pass


@dataclass
class Exercise:
    label: str
    title: str
    run: Callable  # run(answer) -> largest error (float) or None; raises Wrong / NotAttempted
    hints: Sequence[str]
    kind: str = "function"  # "function", "value" or "choice"
    options: Dict[str, str] = field(default_factory=dict)
    success: str = ""


REGISTRY: Dict[str, Exercise] = {}


class NotAttempted(Exception):
    """The answer is still the starter's placeholder."""


class Wrong(Exception):
    """The answer disagrees: ``quantity`` names what, ``detail`` by how much, ``where`` at which
    input, ``look_at`` what to look at. None of them may contain the right answer."""

    def __init__(self, quantity: str, detail: str, where: str = "", look_at: str = "",
                 error: Optional[float] = None):
        super().__init__(f"{quantity}: {detail}")
        self.quantity, self.detail, self.where = quantity, detail, where
        self.look_at, self.error = look_at, error


def exercise(label: str, title: str, hints: Sequence[str], success: str = "",
             kind: str = "function"):
    """Register ``run(answer)`` as the checker of exercise ``label`` (a decorator)."""
    if len(hints) != 3:
        raise ValueError(f"hints must be three graded hints for {label}, got {len(hints)}")

    def register(run: Callable) -> Callable:
        if label in REGISTRY:
            raise ValueError(f"exercise label {label!r} is registered twice")
        REGISTRY[label] = Exercise(label, title, run, tuple(hints), kind, success=success)
        return run

    return register


def digest(label: str, option: str) -> str:
    """The stored form of a multiple-choice answer: not readable at a glance in the source."""
    return hashlib.sha256(f"{label}:{option}".encode()).hexdigest()[:16]


def choice(label: str, title: str, options: Dict[str, str], right: str,
           wrong_notes: Dict[str, str], hints: Sequence[str], success: str = "") -> None:
    """Register a multiple-choice question; ``right`` is the :func:`digest` of the right option.

    ``wrong_notes`` says, for each wrong option, what to look at (without naming the right one).
    """
    if not any(digest(label, o) == right for o in options):
        raise ValueError(f"{label}: the stored answer matches none of the options")

    def run(answer):
        if not isinstance(answer, str):
            raise Wrong("your answer", f"should be one of the letters {_letters(options)} "
                        f"as a string, got {type(answer).__name__}")
        key = answer.strip().strip("()").strip().lower()
        if key not in options:
            raise Wrong("your answer", f"{answer!r} is not one of the options "
                        f"{_letters(options)}")
        if digest(label, key) != right:
            raise Wrong(f"option ({key})", "is not the right one",
                        look_at=wrong_notes.get(key, ""))
        return None

    if len(hints) != 3:
        raise ValueError(f"hints must be three graded hints for {label}, got {len(hints)}")
    if label in REGISTRY:
        raise ValueError(f"exercise label {label!r} is registered twice")
    REGISTRY[label] = Exercise(label, title, run, tuple(hints), "choice", dict(options), success)


def _letters(options) -> str:
    keys = sorted(options)
    return ", ".join(keys[:-1]) + " or " + keys[-1]


def is_placeholder(answer) -> bool:
    """``...`` or ``None``: what a starter cell holds before the reader writes anything."""
    return answer is Ellipsis or answer is None


def call(fn: Callable, *args, where: str = "", name: str = "your function"):
    """Call the reader's function; a ``NotImplementedError`` means not attempted yet."""
    if not callable(fn):
        raise Wrong(name, f"should be a function, got {type(fn).__name__}", where)
    try:
        return fn(*args)
    except NotImplementedError:
        raise NotAttempted() from None
    except Exception as exc:  # the reader's bug, reported as a wrong answer
        text = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise Wrong(name, f"raised {type(exc).__name__}: {text}", where,
                    "run it on the inputs above and read the traceback") from None


def as_tensor(quantity: str, value, where: str = "") -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to(torch.float64)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(float(value), dtype=torch.float64)
    raise Wrong(quantity, f"should be a tensor or a number, got {type(value).__name__}", where)


def unpack(quantity: str, value, n: int, where: str = "") -> tuple:
    """The reader's tuple of ``n`` results (or a list), else a Wrong naming the count."""
    if not isinstance(value, (tuple, list)):
        raise Wrong(quantity, f"should be a tuple of {n} results, got "
                    f"{type(value).__name__}", where)
    if len(value) != n:
        raise Wrong(quantity, f"should have {n} entries, got {len(value)}", where)
    return tuple(value)


def compare(quantity: str, got, expected: torch.Tensor, *, where: str = "",
            tol: float = 1e-8, look_at: str = "", vector: bool = False) -> float:
    """The relative error of ``got`` against ``expected``; a :class:`Wrong` above ``tol``.

    The relative error is ``max |got - expected| / max |expected|``. With ``vector=True`` a
    row and a column of the same length count as the same shape (only the numbers matter).
    The message reports the shapes and the size of the error, never the expected values.
    """
    got = as_tensor(quantity, got, where)
    expected = expected.detach().to(torch.float64)
    if vector and got.numel() == expected.numel() and got.dim() <= 2 and expected.dim() <= 2:
        got = got.reshape(expected.shape)
    if got.numel() == 1 and expected.numel() == 1:
        got = got.reshape(expected.shape)
    if got.shape != expected.shape:
        hint = ""
        if got.dim() == 2 and tuple(got.shape[::-1]) == tuple(expected.shape):
            hint = "a transposed product? "
        want = "a single number" if expected.dim() == 0 else f"shape {tuple(expected.shape)}"
        raise Wrong(quantity, f"has shape {tuple(got.shape)}, expected {want}", where,
                    hint + look_at)
    if not torch.isfinite(got).all():
        raise Wrong(quantity, "contains inf or nan", where, look_at)
    scale = expected.abs().max().item() if expected.numel() else 0.0
    scale = scale if scale > 0 else 1.0
    err = (got - expected).abs().max().item() / scale if got.numel() else 0.0
    if not err <= tol:
        note = look_at
        if (got + expected).abs().max().item() / scale <= tol:
            note = "the size is right but the sign is flipped. " + look_at
        elif got.abs().max().item() < 1e-14:
            note = "it is zero. " + look_at
        raise Wrong(quantity, f"is off by a relative {err:.1e} "
                    f"(tolerance {tol:.0e})", where, note.strip(), err)
    return err


def rk4_adjoint(func, z0: torch.Tensor, t0: float, t1: float, loss_fn: Callable, steps: int,
                dynamics: Callable):
    """A fixed-step RK4 adjoint whose backward right-hand side is ``dynamics(t, z, lam)``.

    ``dynamics`` returns ``(dz, dlam, dtheta)`` with ``dtheta`` one tensor per parameter. Used
    to put a reader's VJP or augmented dynamics inside a whole backward solve, which is then
    compared with :func:`helpers.odeint_adjoint`. Returns ``(dL_dz0, [dL_dθ...])``.
    """
    params = [p for p in func.parameters() if p.requires_grad]
    h = (t1 - t0) / steps
    with torch.no_grad():
        z = z0.detach().clone()
        for k in range(steps):
            t = t0 + k * h
            k1 = func(torch.tensor(t, dtype=torch.float64), z)
            k2 = func(torch.tensor(t + h / 2, dtype=torch.float64), z + h / 2 * k1)
            k3 = func(torch.tensor(t + h / 2, dtype=torch.float64), z + h / 2 * k2)
            k4 = func(torch.tensor(t + h, dtype=torch.float64), z + h * k3)
            z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    z1 = z.clone().requires_grad_(True)
    with torch.enable_grad():
        (lam,) = torch.autograd.grad(loss_fn(z1), z1)

    def rhs(t, state):
        dz, dlam, dtheta = dynamics(torch.tensor(t, dtype=torch.float64), state[0], state[1])
        return [dz, dlam, *dtheta]

    state = [z1.detach(), lam, *[torch.zeros_like(p) for p in params]]
    for k in range(steps):
        t, hh = t1 - k * h, -h
        k1 = rhs(t, state)
        k2 = rhs(t + hh / 2, [y + hh / 2 * d for y, d in zip(state, k1)])
        k3 = rhs(t + hh / 2, [y + hh / 2 * d for y, d in zip(state, k2)])
        k4 = rhs(t + hh, [y + hh * d for y, d in zip(state, k3)])
        state = [(y + hh / 6 * (a + 2 * b + 2 * c + d)).detach()
                 for y, a, b, c, d in zip(state, k1, k2, k3, k4)]
    return state[1], state[2:]


COLUMN = 68  # printed lines fit the book's code column (helpers.display.COLUMN)


def wrap(*paragraphs: str) -> str:
    """Each paragraph on its own lines, wrapped at the book's column; long tokens stay whole."""
    return "\n".join(textwrap.fill(p, COLUMN, break_long_words=False, break_on_hyphens=False)
                     for p in paragraphs if p)


def format_message(ex: Exercise, status: str, error: Optional[float] = None,
                   wrong: Optional[Wrong] = None) -> str:
    more = f"More help: ex.hint({ex.label!r}, 1), then 2 and 3."
    if status == "not attempted":
        what = "choose an option" if ex.kind == "choice" else "fill in the starter cell"
        return wrap(f"{ex.label}: not attempted yet. {what.capitalize()} above, run it, then "
                    "run this cell again.", more)
    if status == "right":
        err = "" if error is None else f" Largest relative error {error:.1e}."
        return wrap(f"{ex.label}: right. {ex.success}{err}".replace("  ", " ").strip())
    assert wrong is not None
    first = (f"{ex.label}: not yet. {wrong.quantity} {wrong.detail}"
             + (f", at {wrong.where}" if wrong.where else "") + ".")
    return wrap(first, f"Look at: {wrong.look_at}" if wrong.look_at else "", more)


def run_check(label: str, answer, quiet: bool = False) -> CheckResult:
    if not isinstance(label, str):
        raise TypeError(f"label must be a string naming an exercise, got {type(label).__name__}")
    ex = lookup(label)
    if is_placeholder(answer):
        status, error, wrong = "not attempted", None, None
    else:
        try:
            with torch.random.fork_rng():
                error = ex.run(answer)
            status, wrong = "right", None
        except NotAttempted:
            status, error, wrong = "not attempted", None, None
        except Wrong as w:
            status, error, wrong = "wrong", w.error, w
    message = format_message(ex, status, error, wrong)
    if not quiet:
        print(message)
    return CheckResult(label, status, message, error)


def lookup(label: str) -> Exercise:
    if label not in REGISTRY:
        chapter = re.match(r"ch\d+", label)
        near = sorted(k for k in REGISTRY if chapter and k.startswith(chapter.group(0) + "-"))
        known = ", ".join(near) if near else ", ".join(sorted(REGISTRY))
        raise ValueError(f"label {label!r} names no self-checking exercise; known: {known}")
    return REGISTRY[label]
