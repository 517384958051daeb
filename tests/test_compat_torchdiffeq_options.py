"""torchdiffeq's options and callbacks that its own test suite relies on (issue 14).

Each test is set up so that ignoring the option changes the answer by far more than the
tolerance: against torchdiffeq itself (a test dependency) or against a closed form.
"""
import warnings

import pytest
import torch
import torchdiffeq

import helpers

F64 = torch.float64
FIXED = ("euler", "midpoint", "rk4", "heun2", "heun3")


def oscillator(t, y):
    return torch.stack([y[1], -y[0]])


def crossing(t, y):
    return y[0] - 0.3


# --- options['interp'] for an event located by a fixed-step method --------------------------


@pytest.mark.parametrize("method", ["euler", "midpoint"])
def test_event_interp_matches_torchdiffeq(method):
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    found = {}
    for interp in ("linear", "cubic"):
        options = dict(step_size=0.1, interp=interp)
        t_ours, ys = helpers.odeint(oscillator, y0, t, method=method, event_fn=crossing, options=options)
        t_ref, ys_ref = torchdiffeq.odeint(oscillator, y0, t, method=method, event_fn=crossing,
                                           options=options)
        # both bisect to the time's resolution; they agree to about 3e-10 here
        assert abs(float(t_ours - t_ref)) < 1e-8
        assert float((ys[-1] - ys_ref[-1]).abs().max()) < 1e-8
        found[interp] = float(t_ours)
    # the two interpolants put the event 3e-4 apart: the option is not ignored
    assert abs(found["linear"] - found["cubic"]) > 1e-4


def test_interp_is_checked():
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(ValueError, match=r"options\['interp'\] must be one of"):
        helpers.odeint(oscillator, y0, t, method="euler", options=dict(step_size=0.1, interp="quadratic"))
    with pytest.raises(ValueError, match="unknown key"):  # adaptive methods have their own dense output
        helpers.odeint(oscillator, y0, t, options=dict(interp="linear"))


# --- callbacks ---------------------------------------------------------------------------


class Decay(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rate = torch.nn.Parameter(torch.tensor(0.7, dtype=F64))

    def forward(self, t, y):
        return -self.rate * y * (1 + torch.sin(3 * t))


def counting(f, names):
    calls = {name: [] for name in names}
    for name in names:
        setattr(f, name, lambda t0, y0, dt, name=name: calls[name].append((float(t0), float(dt), y0.numel())))
    return calls


@pytest.mark.parametrize("method", FIXED)
@pytest.mark.parametrize("name", ["callback_accept_step", "callback_reject_step"])
def test_fixed_step_warns_about_unused_callbacks(method, name):
    f = Decay()
    calls = counting(f, [name, "callback_step"])
    y0 = torch.tensor([1.0, 2.0], dtype=F64)
    with pytest.warns(UserWarning, match=f"{name}.*never calls.*callback_step"):
        helpers.odeint(f, y0, torch.tensor([0.0, 1.0], dtype=F64), method=method,
                       options=dict(step_size=0.25))
    assert calls[name] == []
    assert len(calls["callback_step"]) == 4


def test_no_warning_without_those_callbacks():
    f = Decay()
    counting(f, ["callback_step"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        helpers.odeint(f, torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), method="rk4")


@pytest.mark.parametrize("method", FIXED)
def test_adjoint_callbacks_fixed(method):
    f = Decay()
    calls = counting(f, ["callback_step", "callback_step_adjoint"])
    y0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    ys = helpers.odeint_adjoint(f, y0, torch.tensor([0.0, 1.0], dtype=F64), method=method,
                                options=dict(step_size=0.1))
    assert len(calls["callback_step"]) == 10 and calls["callback_step_adjoint"] == []
    ys.sum().backward()
    back = calls["callback_step_adjoint"]
    assert len(back) == 10 and len(calls["callback_step"]) == 10
    # from t=1 back to t=0 in steps of -0.1, on the augmented state [z, lambda, a_theta]
    assert [t0 for t0, _, _ in back] == pytest.approx([1 - 0.1 * k for k in range(10)], abs=1e-12)
    assert all(dt == pytest.approx(-0.1, abs=1e-12) and n == 2 + 2 + 1 for _, dt, n in back)


def test_adjoint_callbacks_adaptive():
    f = Decay()
    names = ["callback_step_adjoint", "callback_accept_step_adjoint", "callback_reject_step_adjoint"]
    calls = counting(f, names)
    y0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    stats = helpers.SolveStats()
    # a first backward step of 2.0 over a span of 3 is rejected: every callback is exercised
    ys = helpers.odeint_adjoint(f, y0, torch.tensor([0.0, 3.0], dtype=F64), rtol=1e-8, atol=1e-8,
                                adjoint_options=dict(first_step=2.0), stats=stats)
    ys.sum().backward()
    step, accept, reject = (calls[name] for name in names)
    assert len(accept) == stats.steps_accepted_backward > 0
    assert len(reject) == stats.steps_rejected_backward > 0
    assert len(step) == len(accept) + len(reject)
    assert reject[0][:2] == (3.0, -2.0)
    assert sum(dt for _, dt, _ in accept) == pytest.approx(-3.0, abs=1e-12)


# --- the backward solve inherits perturb and grid_constructor --------------------------------


def jumping(times):
    def f(t, x):
        times.append(float(t))
        return -(1.0 if float(t) < 0.5 else 0.5) * x
    return f


@pytest.mark.parametrize("perturb, grad", [(True, 0.375), (False, 0.5625)])
def test_adjoint_perturb(perturb, grad):
    times = []
    x0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    xs = helpers.odeint_adjoint(jumping(times), x0, torch.tensor([0.0, 1.0], dtype=F64), method="euler",
                                options=dict(step_size=0.5, perturb=perturb), adjoint_params=())
    times.clear()
    xs[-1].sum().backward()
    # Euler backward from 1: d(lambda)/dt = k(t) lambda with k = 0.5 on [0.5, 1], 1 before;
    # the step from 0.5 sees k from before 0.5 only when perturbed:
    # lambda(0) = (1 - 0.5 * 0.5)(1 - 0.5 * k) = 0.375 (perturb) or 0.5625
    assert (1.0 in times) is not perturb and (0.5 in times) is not perturb
    assert float((x0.grad - grad).abs().max()) < 1e-14


def test_adjoint_grid_constructor():
    seen = []

    def grid(f, y0, t):
        seen.append(t.tolist())
        return torch.linspace(float(t[0]), float(t[-1]), 11, dtype=F64)

    x0 = torch.tensor(1.0, dtype=F64, requires_grad=True)
    xs = helpers.odeint_adjoint(lambda t, x: x, x0, torch.tensor([0.0, 1.0], dtype=F64), method="euler",
                                options=dict(grid_constructor=grid), adjoint_params=())
    xs[1].backward()
    assert seen == [[0.0, 1.0], [1.0, 0.0]]
    # ten Euler steps of 0.1 each way: x1 = 1.1**10 x0 and dx1/dx0 = 1.1**10
    assert abs(float(xs[1].detach()) - 1.1 ** 10) < 1e-12
    assert abs(float(x0.grad) - 1.1 ** 10) < 1e-12


# --- the backward solve's norm: a function of torchdiffeq's tuple, readable on grad_fn --------


def rms(parts):
    x = torch.cat([p.reshape(-1) for p in parts])
    return x.pow(2).mean().sqrt()


def scaled_decay(params):
    a, b = params
    return lambda t, x: -x * (a.sum() + b) * (1 + torch.sin(3 * t))


def solve_backward(params, **kwargs):
    stats = helpers.SolveStats()
    x0 = torch.tensor([1.0, 0.5], dtype=F64, requires_grad=True)
    xs = helpers.odeint_adjoint(scaled_decay(params), x0, torch.tensor([0.0, 2.0], dtype=F64), rtol=1e-8,
                                atol=1e-9, adjoint_params=params, stats=stats, **kwargs)
    return xs, stats


def adjoint_params():
    return (torch.full((7,), 0.1, dtype=F64, requires_grad=True), torch.tensor(0.2, dtype=F64, requires_grad=True))


def test_callable_adjoint_norm_gets_the_tuple():
    params = adjoint_params()
    seen = []

    def state_only(parts):  # (t, y, adj_y, *adj_params): the seminorm written by hand
        seen.append(tuple(tuple(p.shape) for p in parts))
        return rms(parts[1:3])

    xs, stats = solve_backward(params, adjoint_options=dict(norm=state_only))
    grads = torch.autograd.grad(xs[-1].sum(), params)
    assert seen and set(seen) == {((), (2,), (2,), (7,), ())}
    xs_ref, stats_ref = solve_backward(params, adjoint_options=dict(norm="seminorm"))
    grads_ref = torch.autograd.grad(xs_ref[-1].sum(), params)
    # the same norm by hand and by name: the same steps, the same gradients
    assert stats.nfe_backward == stats_ref.nfe_backward
    assert all(float((g - r).abs().max()) < 1e-13 for g, r in zip(grads, grads_ref))


def test_callable_adjoint_norm_tuple_state():
    params = adjoint_params()
    seen = []

    def norm(parts):
        seen.append(tuple(tuple(p.shape) for p in parts))
        return rms(parts[1:])

    y0 = (torch.tensor(1.0, dtype=F64, requires_grad=True), torch.full((2, 2), 0.5, dtype=F64))
    f = scaled_decay(params)
    xs = helpers.odeint_adjoint(lambda t, y: (f(t, y[0]), f(t, y[1])), y0, torch.tensor([0.0, 1.0], dtype=F64),
                                adjoint_params=params, adjoint_options=dict(norm=norm))
    xs[0].sum().backward()
    assert seen and set(seen) == {((), (), (2, 2), (), (2, 2), (7,), ())}


def test_adjoint_norm_on_grad_fn_is_honoured():
    params = adjoint_params()
    nfe = {}
    for name in ("seminorm", "full"):
        xs, stats = solve_backward(params, adjoint_options=dict(norm=name))
        xs[-1].sum().backward()
        nfe[name] = stats.nfe_backward
    assert nfe["full"] > nfe["seminorm"]  # the problem tells the two norms apart
    for name, norm in (("seminorm", None), ("full", lambda parts: rms(parts[1:]))):
        xs, stats = solve_backward(params)  # the default: the seminorm
        default = xs.grad_fn.adjoint_options["norm"]
        calls = []

        def spy(parts, norm=norm, default=default, calls=calls):
            calls.append(1)
            return default(parts) if norm is None else norm(parts)

        xs.grad_fn.adjoint_options["norm"] = spy
        xs[-1].sum().backward()
        # the norm found on grad_fn is the seminorm; a replaced one steers the backward solve
        assert calls and stats.nfe_backward == nfe[name]


# --- an event located by dopri8, which has no continuous extension ---------------------------


@pytest.mark.parametrize("reverse", [False, True])
def test_dopri8_event_closed_form(reverse):
    # y' = cos t from y(0) = y0: y = y0 + sin t reaches +-0.5 at t* = +-asin(0.5 - y0) (y0 = 0)
    sign = -1.0 if reverse else 1.0
    y0 = torch.tensor([0.0], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, sign], dtype=F64)
    t_event, ys = helpers.odeint(lambda s, y: torch.cos(s) * torch.ones_like(y), y0, t, method="dopri8",
                                 event_fn=lambda s, y: y[0] - 0.5 * sign)
    exact = sign * torch.pi / 6
    # a cubic Hermite polynomial over dopri8's long steps put it 1.6e-3 off
    assert abs(float(t_event.detach()) - exact) < 1e-12
    assert abs(float(ys[-1, 0].detach()) - 0.5 * sign) < 1e-12
    t_event.backward()
    # dt*/dy0 = -1 / cos(t*)
    assert abs(float(y0.grad) + 1 / (3 ** 0.5 / 2)) < 1e-10


def test_adjoint_inherits_jump_t():
    def f(s, x):
        return -(1.0 if float(s) < 0.5 else 3.0) * x

    nfe, grads = {}, {}
    for jump in (False, True):
        x0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
        stats = helpers.SolveStats()
        options = dict(jump_t=torch.tensor([0.5], dtype=F64)) if jump else None
        xs = helpers.odeint_adjoint(f, x0, torch.tensor([0.0, 1.0], dtype=F64), rtol=1e-9, atol=1e-11,
                                    options=options, adjoint_params=(), stats=stats)
        xs[-1].sum().backward()
        nfe[jump], grads[jump] = stats.nfe_backward, x0.grad
    # x(1) = x0 exp(-0.5 - 1.5): dL/dx0 = exp(-2); the backward solve restarts at the jump too
    # (measured: 219 backward evaluations and 6e-11 off; without the restart 560 and 7e-9)
    assert float((grads[True] - torch.exp(torch.tensor(-2.0, dtype=F64))).abs().max()) < 1e-9
    assert nfe[True] < 0.7 * nfe[False]


# --- a func that makes its own state differentiable (a continuous normalising flow) ----------


class TraceFlow(torch.nn.Module):
    """dz/dt = tanh(W z) and d(logp)/dt = -trace(dz/dz), the trace by autograd inside func."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor([[0.5, -1.0], [1.0, 0.3]], dtype=F64))

    def forward(self, t, state):
        z, _ = state
        with torch.enable_grad():
            if not z.requires_grad:  # as torchdiffeq's cnf example does
                z = z.detach().requires_grad_(True)
            dz = torch.tanh(z @ self.weight.T)
            trace = sum(torch.autograd.grad(dz[:, i].sum(), z, create_graph=True)[0][:, i] for i in range(2))
        return dz, -trace.reshape(-1, 1)


def test_adjoint_accepts_a_func_that_differentiates_its_state():
    torch.manual_seed(0)
    x = torch.randn(5, 2, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    grads = []
    for solve in (helpers.odeint_adjoint, helpers.odeint):
        flow = TraceFlow()
        z, logp = solve(flow, (x, torch.zeros(5, 1, dtype=F64)), t, rtol=1e-10, atol=1e-10)
        (z[-1].pow(2).sum() + logp[-1].sum()).backward()
        grads.append(flow.weight.grad)
    # the adjoint's gradient is backpropagation's, to the tolerance (was: a ValueError naming
    # the state as an untracked tensor)
    assert float((grads[0] - grads[1]).abs().max()) < 1e-7
