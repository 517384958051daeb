"""Per-sample step sizes: a batch of independent problems, each sample with its own adaptive step.

With the shared step of :mod:`helpers.solve`, the error norm runs over the whole batch, so one
stiff sample forces every sample to take its small steps. ``options={"per_sample_steps": True}``
(for the adaptive FSAL methods with dense output, ``dopri5``, ``bosh3``, ``adaptive_heun`` and
``fehlberg2``, in ``odeint``, ``odeint_adjoint`` and its ``adjoint_options``; the backward solve
inherits it from ``options`` when it uses the forward method) treats the batch as independent
problems instead:

- The batch is dimension 0 of ``y0``, which must have at least 2 dimensions. Each sample (row)
  has its own current time, step size and accept/reject decision; its error norm is the RMS over
  that row's entries, and its starting step comes from Hairer's formula applied to that row.
- ``func`` is called with only the rows still being integrated (rows that have reached the end
  are not evaluated: that is the saving) and with ``t`` a 1-D tensor holding one time per row.
  So ``func`` must treat rows independently and accept a 1-D ``t``: an MLP that ignores ``t``
  does; a time-dependent field uses ``t[:, None]``. Normalising over the batch breaks this.
- The outputs at the requested times come from each row's dense output; the last one is the
  exact end state of each row. ``odeint`` backpropagates through the loop (gradients reach
  ``y0``, the parameters and ``t``).
- The backward solve of ``odeint_adjoint`` steps each row's ``[z_i, λ_i]`` on its own, with the
  seminorm over the row's z and λ entries; the shared parameter gradient a_θ receives, for every
  accepted step of row i, h_i Σ_j b_j (−λ_{j,i} ∂f_i/∂θ). ``adjoint_options["norm"] = "full"``
  cannot be combined with it (a_θ belongs to the whole batch, not to one row).
- ``max_num_steps`` bounds the number of iterations of the loop (the slowest sample's attempts).
  Step-size underflow and non-finite states raise :class:`helpers.SolveError` naming the sample
  and the time.
- :class:`helpers.SolveStats` counts calls of ``func`` as NFE, sums the accepted and rejected
  steps over the samples, and adds the sample-evaluations (rows evaluated, summed over calls)
  and the accepted steps of the median and of the slowest sample.

How the backward pass stays exact with one vector–Jacobian product per stage: each stage's VJP
takes ``grad_outputs = −b_j h_i λ_{j,i}`` (row-scaled), so its parameter part is already weighted
by each row's step; its z part, divided by ``b_j h_i``, is row i's −λ ∂f/∂z. The first stage of a
step is the last stage of the previous one (FSAL): its parameter term is taken from that stage's
graph once the next step size is known. Rows that reject a step have their terms taken back by
one extra batched evaluation over those rows (rejections are rare).

Host–device synchronisation: one per step (the rows' error ratios come to the host, where the
step control runs in float64, as in the shared loop).

Introduced in the chapter "Appendix: measured performance" (section "Per-sample step sizes").
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from .errors import SolveError
from .options import SolverSettings
from .runge_kutta import interpolate, weighted_sum
from .stats import StepCounter

_HOST = torch.device("cpu")
_F64 = torch.float64


def check_per_sample(y0: torch.Tensor, settings: SolverSettings, argument: str) -> None:
    """Check that per-sample step sizes, if asked for, can be used with ``y0`` and these settings.

    **Arguments:**

    - `y0`: the initial state; its dimension 0 is the batch.
    - `settings`: checked settings (:func:`helpers.options.make_settings`).
    - `argument`: the argument the settings came from, ``"options"`` or ``"adjoint_options"``,
      named in the messages.

    **Returns:** ``None``; raises ``ValueError`` when the combination cannot work.

    Not shown in the book; it extends the chapter "Appendix: measured performance".
    """
    if not settings.per_sample_steps:
        return
    key = f"{argument}['per_sample_steps']"
    tab = settings.tableau
    if not tab.adaptive or not tab.fsal or tab.dense is None:
        raise ValueError(f"{key} needs an adaptive FSAL method with dense output (dopri5, bosh3, adaptive_heun or fehlberg2), got {tab.name!r}")
    if y0.dim() < 2:
        raise ValueError(
            f"{key}=True needs a batch: y0 must have at least 2 dimensions with the samples along "
            f"dimension 0, got shape {tuple(y0.shape)}"
        )
    if y0.shape[0] == 0:
        raise ValueError(f"{key}=True needs at least one sample, but y0 has shape {tuple(y0.shape)}")
    if argument.startswith("adjoint") and settings.norm == "full":
        raise ValueError(
            f"{argument}['norm']='full' cannot be combined with {key}=True: the parameter gradient a_θ "
            "is shared by the whole batch, so it cannot enter one sample's error norm; use 'seminorm'"
        )


# ----------------------------------------------------------------------------------------------
# Pieces shared by the forward and the backward loop


def _rows(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """View a per-row vector ``(A,)`` as ``(A, 1, ..., 1)`` with ``ndim`` dimensions, to broadcast."""
    return x.reshape(x.shape[0], *([1] * (ndim - 1)))


def _rms_rows(x: torch.Tensor) -> torch.Tensor:
    """The root-mean-square of each row: ``(A, ...) -> (A,)``."""
    x = x.reshape(x.shape[0], -1)
    return torch.linalg.vector_norm(x, dim=1) / math.sqrt(max(x.shape[1], 1))


def _error_ratio_rows(error, y, y_new, rtol: float, atol: float) -> torch.Tensor:
    """Each row's RMS of the local error against the tolerance (≤ 1 accepts), as solve.py per row."""
    error, y, y_new = error.detach(), y.detach(), y_new.detach()  # step control is not differentiated
    scale = torch.maximum(y.abs(), y_new.abs()).mul_(rtol).add_(atol)
    return _rms_rows(error / scale)


def _to_host(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(device=_HOST, dtype=_F64)


def _index(rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    return rows.to(device=device, non_blocking=True)


def _initial_step_rows(evaluate, t0, y0, f0, order, rtol, atol, direction) -> torch.Tensor:
    """Hairer, Nørsett & Wanner's starting step (Solving ODEs I, II.4) for each row: one evaluation.

    The same arithmetic as solve.py's ``_initial_step``, with every norm taken per row.
    **Returns:** the step sizes, a float64 CPU tensor ``(A,)``.
    """
    y0, f0 = y0.detach(), f0.detach()
    scale = atol + rtol * y0.abs()
    d0 = _to_host(_rms_rows(y0 / scale))
    d1 = _to_host(_rms_rows(f0 / scale))
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
    h0_dev = (direction * h0).to(device=y0.device)
    y1 = y0 + _rows(h0_dev.to(y0.dtype), y0.dim()) * f0
    f1 = evaluate(t0.detach() + h0_dev.to(t0.dtype), y1).detach()
    d2 = _to_host(_rms_rows((f1 - f0) / scale)) / h0
    dmax = torch.maximum(d1, d2)
    small = torch.clamp(h0 * 1e-3, min=1e-6)
    h1 = torch.where(dmax <= 1e-15, small, (0.01 / dmax) ** (1.0 / (order + 1)))
    return torch.minimum(100 * h0, h1)


class _Control:
    """Step control of the rows still being integrated, on the host in float64.

    Holds each active row's index in the batch, time, next step size (already cut to land on
    the end of the interval) and whether that step is its last; counts loop iterations and each
    sample's accepted steps.
    """

    def __init__(self, batch: int, t0: float, t_end: float, h_abs: torch.Tensor, settings: SolverSettings,
                 dtype: torch.dtype, counter: StepCounter):
        self.settings = settings
        self.t_end = t_end
        self.direction = 1.0 if t_end > t0 else -1.0
        self.eps = torch.finfo(dtype).eps
        self.dtype = dtype
        self.exponent = -1.0 / (settings.tableau.error_order + 1)
        self.counter = counter
        self.rows = torch.arange(batch)
        self.t = torch.full((batch,), t0, dtype=_F64)
        self.nonfinite_at = torch.full((batch,), math.nan, dtype=_F64)
        self.steps = torch.zeros(batch, dtype=torch.int64)
        self.iterations = 0
        self._plan(h_abs)

    @property
    def active(self) -> int:
        return len(self.rows)

    def _plan(self, h_abs: torch.Tensor) -> None:
        """Set each row's next signed step, cut to end exactly at ``t_end`` when it gets there."""
        self.h_abs = h_abs
        reach = self.direction * (self.t + self.direction * h_abs - self.t_end)
        self.last = reach >= -4 * self.eps * max(abs(self.t_end), 1.0)
        self.h = torch.where(self.last, self.t_end - self.t, self.direction * h_abs)

    def check(self) -> None:
        """Before each iteration: the iteration budget, and each row's step against underflow."""
        s = self.settings
        if self.iterations >= s.max_num_steps:
            k = int(torch.argmax((self.t_end - self.t).abs()))
            raise SolveError(
                f"reached max_num_steps={s.max_num_steps} loop iterations with {self.active} sample(s) unfinished; "
                f"sample {int(self.rows[k])} is at t={float(self.t[k]):.6g}, short of t={self.t_end:.6g} "
                f"(method {s.tableau.name!r}, rtol={s.rtol:g}, atol={s.atol:g}, per-sample steps); that sample's "
                "problem may be stiff: raise options['max_num_steps'], loosen the tolerances, or use a fixed-step method"
            )
        self.iterations += 1
        tiny = self.h_abs <= 4 * self.eps * self.t.abs().clamp(min=1.0)
        if bool(tiny.any()):
            k = int(tiny.nonzero()[0])
            row, t_k = int(self.rows[k]), float(self.t[k])
            if not math.isnan(float(self.nonfinite_at[k])):
                raise SolveError(
                    f"sample {row}: the state became non-finite (inf or nan) near t={float(self.nonfinite_at[k]):.6g} "
                    "and the step size underflowed trying to avoid it; the solution may blow up there"
                )
            raise SolveError(
                f"sample {row}: step size underflow at t={t_k:.6g}: the step fell to {float(self.h_abs[k]):.3g}, "
                f"below what {self.dtype} can resolve; the problem may be stiff or singular there"
            )

    def update(self, ratio: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Accept or reject each row's step from its error ratio and plan its next step.

        **Returns:** ``(accept, done, finite, h_taken)``: boolean masks over the active rows
        (``done``: accepted and at the end), and the signed steps just attempted.
        """
        s = self.settings
        h_taken, last = self.h, self.last
        finite = torch.isfinite(ratio)
        accept = finite & (ratio <= 1.0)
        done = accept & last
        self.nonfinite_at = torch.where(finite, torch.where(accept, math.nan, self.nonfinite_at), self.t + h_taken)
        self.t = torch.where(accept, torch.where(last, self.t_end, self.t + h_taken), self.t)
        safe = torch.where(finite, ratio, 1.0)
        factor = torch.where(safe == 0, s.max_factor, s.safety * safe.clamp(min=1e-300) ** self.exponent)
        factor = factor.clamp(min=s.min_factor, max=s.max_factor)
        factor = torch.where(safe > 1.0, factor.clamp(max=1.0), factor)
        factor = torch.where(finite, factor, s.min_factor)
        n_accept = int(accept.sum())
        self.counter.accepted += n_accept
        self.counter.rejected += len(accept) - n_accept
        self.steps.index_add_(0, self.rows[accept], torch.ones(n_accept, dtype=torch.int64))
        self._plan(h_taken.abs() * factor)
        return accept, done, finite, h_taken

    def keep(self, mask: torch.Tensor) -> None:
        """Drop the rows that finished."""
        for name in ("rows", "t", "nonfinite_at", "h_abs", "last", "h"):
            setattr(self, name, getattr(self, name)[mask])

    def finish(self) -> None:
        self.counter.add_sample_steps(self.steps)


class _RowFunc:
    """``func`` called on a subset of the rows, checked and counted at every call.

    The checks compare metadata only (no synchronisation), so every call is checked: a ``func``
    that mixes rows typically fails only when it first sees fewer rows than the batch.
    """

    def __init__(self, func: Callable, batch: int, counter: StepCounter):
        self.func = func
        self.batch = batch
        self.counter = counter

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.func(t, y)
        self.counter.nfe += 1
        self.counter.sample_evals += y.shape[0]
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"func(t, y) must return a tensor dy/dt, got {type(out).__name__}")
        if out.shape != y.shape:
            raise ValueError(
                f"func(t, y) returned shape {tuple(out.shape)} for y of shape {tuple(y.shape)} "
                f"({y.shape[0]} of the batch's {self.batch} samples); with per_sample_steps func is called with "
                "only the samples still being integrated and a 1-D t with one time per sample, and must "
                "return dy/dt with y's shape, treating the samples (dimension 0) independently"
            )
        if out.dtype != y.dtype:
            raise ValueError(f"func(t, y) returned dtype {out.dtype} but y has dtype {y.dtype}; they must match")
        if out.device != y.device:
            raise ValueError(f"func(t, y) returned a tensor on {out.device} but y is on {y.device}")
        return out


# ----------------------------------------------------------------------------------------------
# Forward


def _stages(func, tableau, t_rows, y, k1, h_t, h_y):
    """One Runge–Kutta step with a step size per row: ``(y_new, ks, error)``.

    ``h_t`` (rows,) in the dtype of the times, ``h_y`` the same broadcast as ``(rows, 1, ...)``
    in the state's dtype.
    """
    ks = [k1]
    y_new = None
    for i in range(1, tableau.stages):
        incr = weighted_sum(tableau.a[i], ks)
        y_i = y if incr is None else torch.addcmul(y, h_y, incr)  # one graph node, not two
        if tableau.fsal and i == tableau.stages - 1:
            y_new = y_i  # the last stage of an FSAL method is taken at the new state
        ks.append(func(t_rows + tableau.c[i] * h_t, y_i))
    if y_new is None:
        y_new = torch.addcmul(y, h_y, weighted_sum(tableau.b, ks))
    with torch.no_grad():  # the error estimate only steers the steps: no graph for it
        error = h_y * weighted_sum(tableau.b_err, ks)
    return y_new, ks, error


def integrate_per_sample(func: Callable, y0: torch.Tensor, t: torch.Tensor, settings: SolverSettings,
                         counter: StepCounter, check_first: bool = True) -> torch.Tensor:
    """Solve ``dy/dt = func(t, y)`` for each sample of the batch with its own adaptive steps.

    **Arguments:**

    - `func`: called as ``func(t_rows, y_rows)`` on the rows still being integrated, with a 1-D
      ``t_rows`` holding one time per row (see the module's notes).
    - `y0`: the initial states, samples along dimension 0 (checked by :func:`check_per_sample`).
    - `t`: 1-D, strictly monotonic (checked by the caller).
    - `settings`: an adaptive method with ``per_sample_steps`` set.
    - `counter`: receives the evaluations, the sample-evaluations, the accepted and rejected
      steps (summed over the samples) and each sample's accepted steps.
    - `check_first`: accepted for the interface of :func:`helpers.solve.integrate`; every call
      of ``func`` is checked here anyway (the check costs no synchronisation).

    **Returns:** a tensor of shape ``(len(t), *y0.shape)``, differentiable by backpropagation
    with respect to ``y0``, the parameters of ``func`` and ``t``.

    Not shown in the book; it extends the chapter "Appendix: measured performance".
    """
    tableau = settings.tableau
    batch, ndim, device = y0.shape[0], y0.dim(), y0.device
    n_out = len(t)
    t_list = t.tolist()
    t_host = torch.tensor(t_list, dtype=_F64)
    direction = 1.0 if t_list[-1] > t_list[0] else -1.0
    t_sorted = direction * t_host  # increasing: searchsorted counts the times a row has passed
    t_grad = t.requires_grad and torch.is_grad_enabled()
    call = _RowFunc(func, batch, counter)

    t_dev = t[0].expand(batch)
    y = y0
    f0 = call(t_dev, y)
    if settings.first_step is not None:
        h_abs = torch.full((batch,), settings.first_step, dtype=_F64)
    else:
        h_abs = _initial_step_rows(call, t_dev, y, f0, tableau.order, settings.rtol, settings.atol, direction)
    ctl = _Control(batch, t_list[0], t_list[-1], h_abs, settings, y0.dtype, counter)
    next_out = torch.ones(batch, dtype=torch.int64)  # each active row's next requested time
    # every output value, with its place row + batch * k in the flattened (len(t) * batch) result
    places: List[torch.Tensor] = [torch.arange(batch, device=device)]
    values: List[torch.Tensor] = [y0]

    while ctl.active:
        ctl.check()
        h_t = ctl.h.to(device=device, dtype=t.dtype)
        if t_grad:
            # the last step ends exactly at t[-1], so the end state depends on it
            h_t = torch.where(ctl.last.to(device), t[-1] - t_dev, h_t)
        h_y = _rows(h_t.to(y.dtype), ndim)
        y_new, ks, error = _stages(call, tableau, t_dev, y, f0, h_t, h_y)
        ratio = _to_host(_error_ratio_rows(error, y, y_new, settings.rtol, settings.atol))  # the one sync
        last = ctl.last
        accept, done, finite, _ = ctl.update(ratio)
        if not bool(accept.any()):
            continue
        everyone = bool(accept.all())
        acc = None if everyone else _index(accept.nonzero().squeeze(1), device)
        if everyone:
            y_a, t_a, ht_a, hy_a, y_new_a, ks_a = y, t_dev, h_t, h_y, y_new, ks
        elif bool(finite.all()) or not y_new.requires_grad:
            y_a, t_a, ht_a, hy_a, y_new_a = y[acc], t_dev[acc], h_t[acc], h_y[acc], y_new[acc]
            ks_a = [k[acc] for k in ks]
        else:
            # a row went non-finite: redo the step for the accepted rows alone, so that no nan
            # enters the graph that backpropagation walks (0 × nan is nan)
            y_a, t_a, ht_a, hy_a = y[acc], t_dev[acc], h_t[acc], h_y[acc]
            y_new_a, ks_a, _ = _stages(call, tableau, t_a, y_a, f0[acc], ht_a, hy_a)

        # outputs at the requested times that the accepted steps passed (or reached), all of
        # this step's in one batch: pair j is accepted row sel[j] and requested time k[j]
        acc_host = accept.nonzero().squeeze(1)
        pending = next_out[acc_host]
        last_a = last[acc_host]
        passed = torch.searchsorted(t_sorted, direction * ctl.t[acc_host], right=True)
        count = (passed - pending).clamp(min=0)
        if bool(count.any()):
            sel = torch.repeat_interleave(torch.arange(len(count)), count)
            first = torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
            k = pending[sel] + torch.arange(len(sel)) - first
            exact = last_a[sel] & (k == n_out - 1)
            place = ctl.rows[acc_host][sel] + batch * k
            # each accepted row passed one requested time: the pairs are the rows, no gather
            one_each = len(sel) == len(count) and bool((count == 1).all())
            for mask, is_exact in ((exact, True), (~exact, False)):
                if not bool(mask.any()):
                    continue
                whole = one_each and bool(mask.all())
                s = None if whole else _index(sel[mask], device)
                if is_exact:
                    val = y_new_a if whole else y_new_a[s]
                else:
                    tk = t[_index(k[mask], device)]
                    if whole:
                        y_s, y_new_s, ks_s, t_s, ht_s, hy_s = y_a, y_new_a, ks_a, t_a, ht_a, hy_a
                    else:
                        # the step's states in one gather: one node for backpropagation, not 9
                        bundle = torch.stack([y_a, y_new_a, *ks_a])[:, s]
                        y_s, y_new_s, *ks_s = bundle.unbind(0)
                        t_s, ht_s, hy_s = t_a[s], ht_a[s], hy_a[s]
                    theta = _rows(((tk - t_s) / ht_s).to(y.dtype), ndim)
                    val = interpolate(tableau, y_s, y_new_s, ks_s, hy_s, theta)
                values.append(val)
                places.append(_index(place[mask], device))
            next_out[acc_host] = pending + count

        # move the accepted rows on (out of place, so that backpropagation sees every step)
        t_next = t_a + ht_a
        if t_grad:
            t_next = torch.where(_index(last_a, device), t[-1], t_next)
        if everyone:
            y, f0, t_dev = y_new_a, ks_a[-1], t_next
        else:
            y = y.index_put((acc,), y_new_a)
            f0 = f0.index_put((acc,), ks_a[-1])
            t_dev = t_dev.index_put((acc,), t_next)
        if bool(done.any()):
            keep = ~done
            kd = _index(keep.nonzero().squeeze(1), device)
            y, f0, t_dev = y[kd], f0[kd], t_dev[kd]
            next_out = next_out[keep]
            ctl.keep(keep)
    ctl.finish()
    order = torch.argsort(torch.cat(places))
    return torch.cat(values)[order].reshape(n_out, *y0.shape)


# ----------------------------------------------------------------------------------------------
# Backward (the adjoint solve of one interval between stored states)


class _Augmented:
    """The backward dynamics d[z, λ]/dt = [f, −λ ∂f/∂z] on a subset of rows, by one VJP per call.

    The rows' state is ``Y`` of shape ``(rows, 2, *z.shape[1:])``: ``Y[:, 0]`` is z, ``Y[:, 1]`` λ.
    """

    def __init__(self, func: Callable, params: Sequence[torch.Tensor], batch: int, counter: StepCounter,
                 dtype: torch.dtype):
        self.call = _RowFunc(func, batch, counter)
        self.params = tuple(params)
        self.dtype = dtype

    def _flat(self, grads, device) -> torch.Tensor:
        parts = [torch.zeros(p.numel(), dtype=self.dtype, device=device) if g is None else g.reshape(-1).to(self.dtype)
                 for p, g in zip(self.params, grads)]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=self.dtype, device=device)

    def __call__(self, t, Y, weight: Optional[torch.Tensor] = None, keep: bool = False):
        """``(K, theta, graph)``: the derivative of ``Y``; if ``weight`` (rows,) is given, the
        parameter part Σ_i w_i (−λ_i ∂f_i/∂θ) flattened (else ``None``); if ``keep``, what
        :meth:`theta_from` needs to take a parameter part from this evaluation later (else ``None``).

        With a weight the VJP runs with ``grad_outputs = −w_i λ_i``, and its z part is divided by
        ``w_i``: one backward pass gives both the λ derivative and the row-weighted θ part.
        """
        lam = Y[:, 1]
        want_theta = weight is not None and bool(self.params)
        with torch.enable_grad():
            z = Y[:, 0].detach().requires_grad_(True)
            f = self.call(t, z)
        if f.requires_grad:
            w = _rows(weight, lam.dim()) if want_theta else None
            go = -lam if w is None else -(w * lam)
            inputs = (z,) + self.params if want_theta else (z,)
            grads = torch.autograd.grad(f, inputs, grad_outputs=go, allow_unused=True, retain_graph=keep)
        else:
            w, grads = None, (None,) * (1 + (len(self.params) if want_theta else 0))
        dz = torch.zeros_like(lam) if grads[0] is None else grads[0].to(lam.dtype)
        if w is not None:
            dz = dz / w
        K = torch.stack([f.detach(), dz], 1)
        theta = self._flat(grads[1:], Y.device) if want_theta else None
        graph = (f, lam) if keep and f.requires_grad and self.params else None
        return K, theta, graph

    def theta_from(self, graph, weight: torch.Tensor) -> Optional[torch.Tensor]:
        """Σ_i w_i (−λ_i ∂f_i/∂θ) from an evaluation kept with ``keep=True`` (frees its graph)."""
        if graph is None:
            return None
        f, lam = graph
        grads = torch.autograd.grad(f, self.params, grad_outputs=-(_rows(weight, lam.dim()) * lam), allow_unused=True)
        return self._flat(grads, lam.device)

    def theta_at(self, t, Y, weight: torch.Tensor) -> Optional[torch.Tensor]:
        """Σ_i w_i (−λ_i ∂f_i/∂θ) at the rows ``Y``, by a fresh evaluation of ``func``."""
        with torch.enable_grad():
            f = self.call(t, Y[:, 0].detach())
        if not f.requires_grad:
            return None
        grads = torch.autograd.grad(f, self.params, grad_outputs=-(_rows(weight, f.dim()) * Y[:, 1]), allow_unused=True)
        return self._flat(grads, Y.device)


def backward_interval_per_sample(func: Callable, params: Sequence[torch.Tensor], z: torch.Tensor, lam: torch.Tensor,
                                 a_theta: torch.Tensor, t_from: torch.Tensor, t_to: torch.Tensor,
                                 settings: SolverSettings, counter: StepCounter):
    """Solve the adjoint system of one interval backward, each sample with its own adaptive steps.

    **Arguments:**

    - `func`, `params`: the forward vector field and the parameters θ that receive gradients.
    - `z`, `lam`: the stored forward state and λ at ``t_from`` (samples along dimension 0).
    - `a_theta`: the flat parameter gradient accumulated so far.
    - `t_from`, `t_to`: the interval's ends (0-d tensors); the solve runs from ``t_from`` to ``t_to``.
    - `settings`: the backward solve's settings (``per_sample_steps`` set, seminorm).
    - `counter`: receives the evaluations (each costs one evaluation of ``func`` and one VJP),
      sample-evaluations, steps summed over samples, and each sample's accepted steps.

    **Returns:** ``(lam, a_theta)`` at ``t_to``; ``a_theta`` has gained, for every accepted step
    of every row i, h_i Σ_j b_j (−λ_{j,i} ∂f_i/∂θ(z_{j,i})).

    Not shown in the book; it extends the chapter "Appendix: measured performance".
    """
    tableau = settings.tableau
    b, c, stages = tableau.b, tableau.c, tableau.stages
    batch, device = z.shape[0], z.device
    t0, t1 = float(t_from), float(t_to)
    direction = 1.0 if t1 > t0 else -1.0
    aug = _Augmented(func, params, batch, counter, a_theta.dtype)
    theta_on = bool(aug.params)
    Y = torch.stack([z, lam], 1)
    ndim = Y.dim()
    t_dev = t_from.detach().expand(batch)

    K1, _, graph1 = aug(t_dev, Y, keep=theta_on)
    if settings.first_step is not None:
        h_abs = torch.full((batch,), settings.first_step, dtype=_F64)
    else:
        h_abs = _initial_step_rows(lambda tt, yy: aug(tt, yy)[0], t_dev, Y, K1, tableau.order,
                                   settings.rtol, settings.atol, direction)
    ctl = _Control(batch, t0, t1, h_abs, settings, z.dtype, counter)
    a = a_theta
    if theta_on:
        # the first stage's term of each row's first step, now that the step is known
        a = _add(a, aug.theta_from(graph1, (b[0] * ctl.h).to(device=device, dtype=Y.dtype)))
    out_rows: List[torch.Tensor] = []
    out_lam: List[torch.Tensor] = []

    while ctl.active:
        ctl.check()
        h_host = ctl.h
        h_t = h_host.to(device=device, dtype=t_dev.dtype)
        h_w = h_host.to(device=device, dtype=Y.dtype)
        h_y = _rows(h_w, ndim)
        ks, ys, ts = [K1], [Y], [t_dev]
        d_a = None
        graph_last = None
        for i in range(1, stages):
            incr = weighted_sum(tableau.a[i], ks)
            Y_i = Y if incr is None else torch.addcmul(Y, h_y, incr)
            t_i = t_dev + c[i] * h_t
            final = i == stages - 1  # the FSAL stage: the next step's first
            weight = b[i] * h_w if theta_on and b[i] != 0 and not final else None
            K_i, theta, graph = aug(t_i, Y_i, weight=weight, keep=final and theta_on)
            d_a = _add(d_a, theta)
            if final:
                graph_last = graph
            ks.append(K_i)
            ys.append(Y_i)
            ts.append(t_i)
        Y_new = ys[-1]
        error = h_y * weighted_sum(tableau.b_err, ks)
        ratio = _to_host(_error_ratio_rows(error, Y, Y_new, settings.rtol, settings.atol))  # the one sync
        accept, done, finite, h_taken = ctl.update(ratio)

        if theta_on:
            a = _settle(aug, a, d_a, graph_last, ys, ts, accept, done, finite, h_taken, ctl.h, b, device, Y.dtype)

        if bool(accept.any()):
            acc = accept.to(device)
            Y = torch.where(_rows(acc, ndim), Y_new, Y)
            K1 = torch.where(_rows(acc, ndim), ks[-1], K1)
            t_dev = torch.where(acc, t_dev + h_t, t_dev)
        if bool(done.any()):
            fin = _index(done.nonzero().squeeze(1), device)
            out_rows.append(_index(ctl.rows[done], device))
            out_lam.append(Y[fin, 1])
            keep = ~done
            kd = _index(keep.nonzero().squeeze(1), device)
            Y, K1, t_dev = Y[kd], K1[kd], t_dev[kd]
            ctl.keep(keep)
    ctl.finish()
    lam_out = torch.empty_like(lam)
    lam_out[torch.cat(out_rows)] = torch.cat(out_lam)
    return lam_out, a


def _add(total: Optional[torch.Tensor], term: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    if term is None:
        return total
    return term if total is None else total + term


def _settle(aug, a, d_a, graph_last, ys, ts, accept, done, finite, h_taken, h_next, b, device, dtype):
    """Bring a_θ up to date after one step's accept/reject decisions (see the module's notes).

    Terms already taken: stages 2..s−1 of every row with weights b_j h_i (in ``d_a``), and the
    first stage with b_1 h_i (taken when the step was planned). Owed: the last (FSAL) stage of
    the accepted rows, with b_s h_i plus, for rows that go on, the next step's first-stage term
    b_1 h_next. Rejected rows give back their stages 2..s−1 and adjust their first-stage term
    to the step they will try next. If a row went non-finite, ``d_a`` and the last stage's graph
    may hold nan, so every term is recomputed from finite rows instead.
    """
    go_on = accept & ~done
    w_last = torch.where(accept, b[-1] * h_taken, 0.0) + torch.where(go_on, b[0] * h_next, 0.0)
    rejected = ~accept
    clean = bool(finite.all())
    redo_y, redo_t, redo_w = [], [], []

    def redo(mask, j, w):
        if bool(mask.any()):
            idx = _index(mask.nonzero().squeeze(1), device)
            redo_y.append(ys[j][idx])
            redo_t.append(ts[j][idx])
            redo_w.append(w[mask].to(device=device, dtype=dtype))

    if clean:
        a = _add(a, d_a)
        if bool((w_last != 0).any()):
            a = _add(a, aug.theta_from(graph_last, w_last.to(device=device, dtype=dtype)))
        for j in range(1, len(ys) - 1):
            if b[j] != 0:
                redo(rejected, j, -b[j] * h_taken)
    else:
        for j in range(1, len(ys) - 1):
            if b[j] != 0:
                redo(accept, j, b[j] * h_taken)
        redo(accept & (w_last != 0), len(ys) - 1, w_last)
    redo(rejected, 0, b[0] * (h_next - h_taken))
    if redo_y:
        # one batched evaluation over every row and stage that needs a correction
        a = _add(a, aug.theta_at(torch.cat(redo_t), torch.cat(redo_y), torch.cat(redo_w)))
    return a
