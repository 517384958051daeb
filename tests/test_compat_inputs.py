"""Inputs that torchdiffeq accepts: no silent wrong answer from helpers on any of them.

- odeint_adjoint refuses a func whose output depends on a grad-requiring tensor it was not
  given (its gradient would otherwise stay None without a word), and costs no extra evaluation;
- a float64 ``t`` with a float32 state: func sees float32 times, the solution is float32, the
  gradient with respect to ``t`` is float64, and the numbers match torchdiffeq;
- a single output time returns ``y0`` as torchdiffeq does;
- torchdiffeq's Adams and SciPy methods get an error that says what to use instead.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import helpers

torchdiffeq = pytest.importorskip("torchdiffeq")

F32, F64 = torch.float32, torch.float64
SOLVERS = {"odeint": helpers.odeint, "odeint_adjoint": helpers.odeint_adjoint}
TIGHT = dict(rtol=1e-10, atol=1e-12)


class Decay(nn.Module):
    """dy/dt = -a t y with a registered parameter a: y(t) = y0 exp(-a (t² - t0²) / 2)."""

    def __init__(self, a=0.8, dtype=F64):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=dtype))
        self.seen_t_dtypes = set()

    def forward(self, t, y):
        self.seen_t_dtypes.add(t.dtype)
        return -self.a * t * y


# --- 1. gradients the adjoint was not given -----------------------------------------------


def test_closure_over_grad_tensor_is_refused():
    w = torch.tensor([0.7, 1.3], dtype=F64, requires_grad=True)
    y0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(ValueError, match=r"tensor 'w'.*silently lost.*adjoint_params=\[w\]"):
        helpers.odeint_adjoint(lambda s, y: -w * y, y0, t)
    # told about w, the adjoint gives the closed form dL/dw = -y0 e^{-w}, L = sum y(1)
    ys = helpers.odeint_adjoint(lambda s, y: -w * y, y0, t, adjoint_params=[w], rtol=1e-10, atol=1e-12)
    ys[-1].sum().backward()
    exact = -y0.detach() * torch.exp(-w.detach())
    assert (w.grad - exact).abs().max().item() < 1e-8
    assert (y0.grad - torch.exp(-w.detach())).abs().max().item() < 1e-8


def test_non_leaf_closure_is_refused():
    """A tensor computed from a leaf (W = 2 w) leads back to w: refused too."""
    w = torch.tensor(0.4, dtype=F64, requires_grad=True)
    big_w = 2 * w
    with pytest.raises(ValueError, match="adjoint_params"):
        helpers.odeint_adjoint(lambda s, y: -big_w * y, torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64))
    # passing the non-leaf itself is enough: autograd carries dL/dW on to w
    ys = helpers.odeint_adjoint(lambda s, y: -big_w * y, torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64),
                                adjoint_params=[big_w], rtol=1e-10, atol=1e-12)
    ys[-1].sum().backward()
    assert abs(w.grad.item() - 2 * (-2 * math.exp(-0.8))) < 1e-8


class WithPlainAttribute(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.lin = nn.Linear(2, 2).double()
        self.w = w  # a plain attribute, not a Parameter: parameters() does not list it

    def forward(self, t, y):
        return torch.tanh(self.lin(y)) * self.w


def test_module_with_plain_tensor_attribute_is_refused():
    w = torch.tensor([0.5, -0.2], dtype=F64, requires_grad=True)
    model = WithPlainAttribute(w)
    y0 = torch.randn(3, 2, dtype=F64)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    with pytest.raises(ValueError, match=r"'w'.*adjoint_params=list\(model.parameters\(\)\) \+ \[w\]"):
        helpers.odeint_adjoint(model, y0, t)
    # with w passed, every gradient matches backpropagation through helpers.odeint
    weights = torch.randn(3, 3, 2, dtype=F64)
    params = list(model.parameters()) + [w]
    ys = helpers.odeint_adjoint(model, y0, t, adjoint_params=params, rtol=1e-10, atol=1e-12)
    grads = torch.autograd.grad((weights * ys).sum(), params)
    ys_b = helpers.odeint(model, y0, t, rtol=1e-10, atol=1e-12)
    grads_b = torch.autograd.grad((weights * ys_b).sum(), params)
    for g, gb in zip(grads, grads_b):
        assert ((g - gb).norm() / gb.norm()).item() < 1e-7


def test_what_must_not_trigger_the_check():
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64, requires_grad=True)
    y0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    f = Decay()
    # module parameters, even those left out of an explicit adjoint_params
    helpers.odeint_adjoint(f, y0, t).sum().backward()
    helpers.odeint_adjoint(f, y0, t, adjoint_params=[]).sum().backward()
    # func using t, with t requiring grad; a closure over a tensor that does not require grad
    c = torch.tensor(0.3, dtype=F64)
    helpers.odeint_adjoint(lambda s, y: -c * s * y, y0, t).sum().backward()
    # grad disabled: nothing can be lost
    w = torch.tensor(0.3, dtype=F64, requires_grad=True)
    with torch.no_grad():
        ys = helpers.odeint_adjoint(lambda s, y: -w * y, y0, t)
    assert abs(ys[-1, 0].item() - math.exp(-0.3)) < 1e-7
    # a detached use of w inside func is the documented way to leave it out
    helpers.odeint_adjoint(lambda s, y: -w.detach() * y, y0, t).sum().backward()
    assert w.grad is None


def test_closure_over_y0_itself_is_refused():
    """func(t, y) = y0 - y closes over y0: that path of dL/dy0 would be lost."""
    y0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(ValueError, match="adjoint_params"):
        helpers.odeint_adjoint(lambda s, y: y0 - 2 * y, y0, t)
    # passed as a parameter too, y0 gets both paths: y(1) = y0 (1 + e^{-2}) / 2
    ys = helpers.odeint_adjoint(lambda s, y: y0 - 2 * y, y0, t, adjoint_params=[y0], rtol=1e-10, atol=1e-12)
    ys[-1].sum().backward()
    assert (y0.grad - (1 + math.exp(-2)) / 2).abs().max().item() < 1e-8


def test_check_with_per_sample_steps():
    """Per-sample steps call func with one time per row: the check still sees the closure."""
    w = torch.tensor(0.5, dtype=F64, requires_grad=True)
    y0 = torch.randn(4, 2, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    options = dict(per_sample_steps=True)
    with pytest.raises(ValueError, match=r"adjoint_params=\[w\]"):
        helpers.odeint_adjoint(lambda s, y: -w * y, y0, t, options=options)
    ys = helpers.odeint_adjoint(lambda s, y: -w * y, y0, t, options=options, adjoint_params=[w], **TIGHT)
    ys[-1].sum().backward()
    exact = -(y0.detach() * math.exp(-0.5)).sum()
    assert abs(w.grad.item() - exact.item()) < 1e-8 * abs(exact.item())


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_check_costs_no_extra_evaluation(method):
    """The check reuses the solve's first evaluation: as many calls with it as without."""
    calls = []
    f = Decay()

    def counted(s, y):
        calls.append(1)
        return f(s, y)

    y0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    kwargs = dict(method=method, adjoint_params=list(f.parameters()))
    with torch.no_grad():  # no check without grad
        helpers.odeint_adjoint(counted, y0, t, **kwargs)
    without = len(calls)
    calls.clear()
    helpers.odeint_adjoint(counted, y0, t, **kwargs)
    assert len(calls) == without > 0


# --- 2. the dtype of t --------------------------------------------------------------------


def _solve_mixed(module, mode, method, y0_shape, t_grad):
    f = Decay(dtype=F32)
    y0 = torch.full(y0_shape, 1.5, dtype=F32).requires_grad_(True)
    t = torch.tensor([0.0, 0.4, 1.1], dtype=F64).requires_grad_(t_grad)
    options = dict(step_size=0.01) if method == "rk4" else None
    ys = getattr(module, mode)(f, y0, t, method=method, options=options, rtol=1e-6, atol=1e-8)
    loss = (ys * torch.arange(1.0, 4.0).view(3, *([1] * len(y0_shape)))).sum()
    grads = torch.autograd.grad(loss, [y0, t] if t_grad else [y0])
    return f, ys, grads


@pytest.mark.parametrize("mode", sorted(SOLVERS))
@pytest.mark.parametrize("method", ["dopri5", "rk4"])
@pytest.mark.parametrize("t_grad", [False, True], ids=["t", "t-grad"])
@pytest.mark.parametrize("y0_shape", [(2,), ()], ids=["vector", "0-d"])
def test_float64_times_with_float32_state(mode, method, t_grad, y0_shape):
    f, ys, grads = _solve_mixed(helpers, mode, method, y0_shape, t_grad)
    assert f.seen_t_dtypes == {F32}, f.seen_t_dtypes
    assert ys.dtype == F32 and ys.shape == (3, *y0_shape)
    assert grads[0].dtype == F32
    if t_grad:
        assert grads[1].dtype == F64
    _, ys_d, grads_d = _solve_mixed(torchdiffeq, mode, method, y0_shape, t_grad)
    assert ys_d.dtype == F32
    assert (ys.detach() - ys_d.detach()).abs().max().item() < 1e-5
    # the closed form y(t) = y0 exp(-a t^2 / 2), L = sum_i (i + 1) sum y(t_i), a = 0.8
    times = torch.tensor([0.0, 0.4, 1.1], dtype=F64)
    decay = torch.exp(-0.4 * times ** 2)
    weight = torch.arange(1.0, 4.0, dtype=F64)
    n = max(1, math.prod(y0_shape))
    exact = [torch.full(y0_shape, (weight * decay).sum().item(), dtype=F64),
             weight * n * 1.5 * decay * (-0.8 * times)]  # dL/dt0 = 0: f(t0, y0) = 0 at t0 = 0
    assert (ys.detach().reshape(3, -1) - 1.5 * decay[:, None]).abs().max().item() < 1e-5
    for k, (g, g_d, g_exact) in enumerate(zip(grads, grads_d, exact)):
        assert g.dtype == g_d.dtype
        scale = g_exact.abs().max().item()
        # float32 backpropagation through the step control: within 2e-4 of the scale
        assert (g - g_exact).abs().max().item() < 2e-4 * scale
        if k == 1 and mode == "odeint" and method == "rk4":
            # torchdiffeq's fixed grid, backpropagated, gives dL/dt = [-0.90, 0, -2.44]
            # where the closed form has [0, -0.90, -2.44]: compare with the closed form only
            continue
        assert (g_d - g_exact).abs().max().item() < 2e-4 * scale


def test_times_that_merge_in_float32_are_refused():
    """Two float64 times one float32 rounding apart become equal: a clear error, not a zero step."""
    t = torch.tensor([0.0, 1.0, 1.0 + 1e-12], dtype=F64)
    with pytest.raises(ValueError, match=r"strictly increasing.*after casting t to y0's dtype torch.float32"):
        helpers.odeint(lambda s, y: -y, torch.ones(2), t)


# --- 3. a single output time --------------------------------------------------------------


@pytest.mark.parametrize("mode", sorted(SOLVERS))
@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_single_time_returns_y0(mode, method):
    results = {}
    for name, module in (("helpers", helpers), ("torchdiffeq", torchdiffeq)):
        f = Decay()
        y0 = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=F64, requires_grad=True)
        t = torch.tensor([0.7], dtype=F64, requires_grad=True)
        ys = getattr(module, mode)(f, y0, t, method=method)
        assert ys.shape == (1, 2, 2)
        assert torch.equal(ys[0], y0.detach())
        assert ys.data_ptr() != y0.data_ptr()  # a new tensor, not a view of y0
        weights = torch.randn(1, 2, 2, dtype=F64)
        (weights * ys).sum().backward()
        assert torch.equal(y0.grad, weights[0])
        results[name] = t.grad
    g, g_d = results["helpers"], results["torchdiffeq"]
    assert (g is None) == (g_d is None), (g, g_d)
    if g is not None:
        assert torch.equal(g, g_d) and not g.any()


def test_single_time_checks_arguments_still():
    with pytest.raises(ValueError, match="finite"):
        helpers.odeint(lambda s, y: -y, torch.ones(2), torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="not a known method"):
        helpers.odeint_adjoint(lambda s, y: -y, torch.ones(2), torch.tensor([0.0]), method="rk45")


# --- 4. methods helpers does not provide --------------------------------------------------


@pytest.mark.parametrize("mode", sorted(SOLVERS))
@pytest.mark.parametrize("method", ["adams", "explicit_adams", "implicit_adams", "fixed_adams", "scipy_solver"])
def test_methods_not_provided(mode, method):
    y0, t = torch.ones(2), torch.tensor([0.0, 1.0])
    expected = rf"method='{method}' is a torchdiffeq method that helpers does not provide.*'dopri5'.*'rk4'.*torchdiffeq.odeint"
    with pytest.raises(ValueError, match=expected):
        SOLVERS[mode](lambda s, y: -y, y0, t, method=method)
    if mode == "odeint_adjoint":
        with pytest.raises(ValueError, match="adjoint_" + expected):
            helpers.odeint_adjoint(lambda s, y: -y, y0, t, adjoint_method=method)
