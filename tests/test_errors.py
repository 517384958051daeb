"""Bad input gets a clear, prompt error, and the next call works.

Every error is a ValueError or TypeError (helpers.SolveError is a ValueError) whose message
names the argument or says where the solve stopped; none is an AssertionError, and each test
finishes well under a second (checked by the autouse fixture below).
"""
from __future__ import annotations

import re
import time

import pytest
import torch

import helpers
from helpers.problems import LinearODE

F64 = torch.float64
TIME_LIMIT_S = 1.0


@pytest.fixture(scope="module", autouse=True)
def _warm_up():
    """Pay torch's one-time costs (the meta device's kernels, the first autograd pass) up front:
    they are not the solver's, and must not count against each test's time limit."""
    torch.eye(2, dtype=F64, device="meta")
    if torch.cuda.is_available():
        torch.eye(2, dtype=F64, device="cuda")
    next_call_works()


@pytest.fixture(autouse=True)
def prompt():
    """Each error test must be prompt: no hidden long solve before the error."""
    start = time.perf_counter()
    yield
    elapsed = time.perf_counter() - start
    assert elapsed < TIME_LIMIT_S, f"took {elapsed:.2f} s; an error must come promptly"


def decay(t, y):
    return -y


def y0_(*values, **kw):
    return torch.tensor(values or (1.0, 2.0), dtype=F64, **kw)


def t_(*values, **kw):
    return torch.tensor(values or (0.0, 1.0), dtype=F64, **kw)


def next_call_works():
    """After a failed call, a good one (forward and adjoint with backward) still works."""
    y0 = y0_().requires_grad_(True)
    ys = helpers.odeint(decay, y0, t_(), rtol=1e-8, atol=1e-10)
    assert torch.allclose(ys[-1], y0.detach() * torch.exp(torch.tensor(-1.0, dtype=F64)), rtol=1e-6)
    ys = helpers.odeint_adjoint(decay, y0, t_(), rtol=1e-8, atol=1e-10)
    ys[-1].sum().backward()
    assert torch.allclose(y0.grad, torch.exp(torch.tensor(-1.0, dtype=F64)).expand(2), rtol=1e-6)


SOLVERS = [helpers.odeint, helpers.odeint_adjoint]
solvers = pytest.mark.parametrize("odeint", SOLVERS, ids=["odeint", "odeint_adjoint"])


def times_in(message: str):
    return [float(x) for x in re.findall(r"t=(-?\d+(?:\.\d*)?(?:e[-+]?\d+)?)", message)]


# --- the times --------------------------------------------------------------------------------


@solvers
@pytest.mark.parametrize("t,match", [
    ((0.0, 1.0, 0.5), r"strictly increasing or strictly decreasing; t\[1\]=1.0 and t\[2\]=0.5"),
    ((0.0, 1.0, 1.0, 2.0), r"strictly increasing or strictly decreasing; t\[1\]=1.0 and t\[2\]=1.0"),
    ((0.0, 0.0), "strictly increasing or strictly decreasing"),
    ((2.0, 1.0, 1.5), "strictly increasing or strictly decreasing"),
], ids=["non-monotonic", "repeated", "repeated-start", "decreasing-then-increasing"])
def test_t_not_strictly_monotonic(odeint, t, match):
    with pytest.raises(ValueError, match=match):
        odeint(decay, y0_(), t_(*t))
    next_call_works()


@solvers
@pytest.mark.parametrize("t,match", [
    (torch.zeros(2, 2, dtype=F64), r"t must be 1-D, got a tensor of shape \(2, 2\)"),
    (torch.tensor(1.0, dtype=F64), r"t must be 1-D, got a tensor of shape \(\)"),
    (torch.zeros(0, dtype=F64), "t must hold at least one time"),
    (torch.tensor([0.0, float("nan")], dtype=F64), "t must contain only finite values"),
    (torch.tensor([0.0, float("inf")], dtype=F64), "t must contain only finite values"),
], ids=["2-D", "0-D", "empty", "nan", "inf"])
def test_t_bad_shape_or_values(odeint, t, match):
    with pytest.raises(ValueError, match=match):
        odeint(decay, y0_(), t)
    next_call_works()


@solvers
@pytest.mark.parametrize("t,exc,match", [
    ([0.0, 1.0], TypeError, "t must be a 1-D torch.Tensor"),
    (torch.tensor([0, 1]), TypeError, "t must be a floating-point tensor"),
], ids=["list", "int"])
def test_t_wrong_type(odeint, t, exc, match):
    with pytest.raises(exc, match=match):
        odeint(decay, y0_(), t)
    next_call_works()


# --- y0 and func ------------------------------------------------------------------------------


@solvers
@pytest.mark.parametrize("y0,exc,match", [
    (torch.tensor([1, 2]), TypeError, r"y0 must be a real floating-point tensor .*torch.int64"),
    (torch.tensor([1.0 + 1j]), TypeError, "y0 must be a real floating-point tensor"),
    ([1.0, 2.0], TypeError, "y0 must be a torch.Tensor"),
    ((torch.ones(1), torch.ones(1, dtype=F64)), TypeError, r"must share one dtype: y0\[0\] is torch.float32 but y0\[1\]"),
    (torch.tensor([1.0, float("nan")], dtype=F64), ValueError, "y0 contains inf or nan"),
], ids=["int", "complex", "list", "tuple-mixed-dtypes", "nan"])
def test_bad_y0(odeint, y0, exc, match):
    with pytest.raises(exc, match=match):
        odeint(decay, y0, t_())
    next_call_works()


@solvers
@pytest.mark.parametrize("func,exc,match", [
    (lambda t, y: y[:1], ValueError, r"func\(t, y\) returned shape \(1,\) but y0 has shape \(2,\)"),
    (lambda t, y: y.sum(), ValueError, r"func\(t, y\) returned shape \(\) but y0 has shape \(2,\)"),
    (lambda t, y: y.float(), ValueError, r"func\(t, y\) returned dtype torch.float32 but y0 has dtype torch.float64"),
    (lambda t, y: [1.0, 2.0], TypeError, r"func\(t, y\) must return a tensor"),
    ("not callable", TypeError, "func must be callable"),
], ids=["wrong-shape", "scalar", "wrong-dtype", "not-a-tensor", "not-callable"])
@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_bad_func(odeint, method, func, exc, match):
    with pytest.raises(exc, match=match):
        odeint(func, y0_(), t_(), method=method)
    next_call_works()


# --- method and options ------------------------------------------------------------------------


@solvers
@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(method="rk45"), ValueError, r"method='rk45' is not a known method; choose one of \['adaptive_heun', 'bosh3', 'dopri5'"),
    (dict(method="Dopri5"), ValueError, "method='Dopri5' is not a known method"),
    (dict(method=4), TypeError, "method must be a string"),
    (dict(method="rk4", options=dict(step_sise=0.1)), ValueError, r"options has unknown key\(s\) \['step_sise'\].*'step_size'"),
    (dict(options=dict(step_size=0.1)), ValueError, r"unknown key\(s\) \['step_size'\].*adaptive methods take first_step"),
    (dict(options=dict(norm="seminorm")), ValueError, r"options\['norm'\]='seminorm'.*adjoint_options"),
    (dict(options=dict(max_num_step=10)), ValueError, r"unknown key\(s\) \['max_num_step'\]"),
    (dict(options=[("step_size", 0.1)]), TypeError, "options must be a dict or None"),
    (dict(method="rk4", options=dict(step_size=-0.1)), ValueError, r"options\['step_size'\] must be a positive finite number, got -0.1"),
    (dict(method="rk4", options=dict(step_size=0.0)), ValueError, r"options\['step_size'\] must be a positive"),
    (dict(options=dict(first_step=-0.01)), ValueError, r"options\['first_step'\] must be a positive finite number"),
    (dict(options=dict(max_num_steps=0)), ValueError, r"options\['max_num_steps'\] must be a positive integer"),
    (dict(options=dict(max_num_steps=2.5)), ValueError, r"options\['max_num_steps'\] must be a positive integer"),
    (dict(options=dict(safety=1.5)), ValueError, r"options\['safety'\] must be below 1"),
    (dict(options=dict(min_factor=2.0)), ValueError, "min_factor < 1 < max_factor"),
    # the boundary itself: a max_factor of exactly 1 could never grow a step, so it is refused too
    (dict(options=dict(max_factor=1.0)), ValueError, "min_factor < 1 < max_factor"),
    (dict(options=dict(min_factor=1.0)), ValueError, "min_factor < 1 < max_factor"),
    (dict(rtol=-1e-6), ValueError, "rtol must be a non-negative finite number"),
    (dict(atol=float("nan")), ValueError, "atol must be a non-negative finite number"),
    (dict(rtol="1e-6"), TypeError, "rtol must be a non-negative number"),
    (dict(rtol=0, atol=0), ValueError, "rtol and atol cannot both be zero"),
], ids=lambda x: None)
def test_bad_method_or_options(odeint, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        odeint(decay, y0_(), t_(), **kwargs)
    next_call_works()


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(adjoint_method="rk45"), ValueError, "adjoint_method='rk45' is not a known method"),
    (dict(adjoint_options=dict(step_sise=0.1)), ValueError, r"adjoint_options has unknown key\(s\) \['step_sise'\]"),
    (dict(adjoint_options=dict(norm="semi")), ValueError, r"adjoint_options\['norm'\] must be one of \['seminorm', 'full'\]"),
    (dict(adjoint_options=dict(checkpoints=-1)), ValueError, r"adjoint_options\['checkpoints'\] must be a non-negative integer"),
    (dict(adjoint_rtol=-1.0), ValueError, "adjoint_rtol must be a non-negative"),
    (dict(adjoint_method="rk4", adjoint_options=dict(step_size=-1.0)), ValueError, r"adjoint_options\['step_size'\] must be a positive"),
    (dict(adjoint_params=torch.ones(2, requires_grad=True)), TypeError, "adjoint_params must be a sequence of tensors"),
    (dict(adjoint_params=[1.0]), TypeError, r"adjoint_params\[0\] must be a torch.Tensor"),
    (dict(adjoint_params=[torch.ones(2, requires_grad=True), torch.ones(2, dtype=torch.int64)]), None, None),
], ids=lambda x: None)
def test_bad_adjoint_arguments(kwargs, exc, match):
    if exc is None:  # a parameter that does not require grad is simply left out
        helpers.odeint_adjoint(decay, y0_(), t_(), **kwargs)
    else:
        with pytest.raises(exc, match=match):
            helpers.odeint_adjoint(decay, y0_(), t_(), **kwargs)
    next_call_works()


# --- solves that start but cannot finish -------------------------------------------------------


def blow_up(t, z):
    return z ** 2  # from z(0) = 1 the solution is 1/(1 - t): it blows up at t = 1


@solvers
@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_blow_up_adaptive_says_where(odeint, method):
    with pytest.raises(helpers.SolveError) as info:
        odeint(blow_up, y0_(1.0), t_(0.0, 2.0), method=method, rtol=1e-6, atol=1e-8)
    message = str(info.value)
    print(f"\n{method}: {message}")
    assert re.search("underflow|non-finite", message)
    assert any(abs(x - 1.0) < 1e-3 for x in times_in(message)), message
    next_call_works()


@solvers
def test_blow_up_fixed_step_says_where(odeint):
    with pytest.raises(helpers.SolveError, match=r"non-finite \(inf or nan\) between t=") as info:
        odeint(blow_up, y0_(1.0), torch.linspace(0.0, 2.0, 41, dtype=F64), method="rk4", options=dict(step_size=0.01))
    message = str(info.value)
    print(f"\nrk4: {message}")
    assert any(abs(x - 1.0) < 0.1 for x in times_in(message)), message
    next_call_works()


@solvers
@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_non_finite_state_adaptive(odeint, method):
    """func returns nan past t = 1: the message says the state became non-finite, and where."""
    def nan_past_one(t, z):
        return torch.sqrt(1.0 - t) * z

    with pytest.raises(helpers.SolveError, match="non-finite") as info:
        odeint(nan_past_one, y0_(1.0), t_(0.0, 2.0), method=method)
    assert any(abs(x - 1.0) < 1e-3 for x in times_in(str(info.value))), str(info.value)
    next_call_works()


@solvers
def test_step_size_underflow(odeint):
    with pytest.raises(helpers.SolveError, match=r"step size underflow at t=1\b") as info:
        odeint(blow_up, y0_(1.0), t_(0.0, 2.0))
    assert "float64" in str(info.value)
    next_call_works()


def stiff(t, z):
    return -1e6 * (z - torch.cos(t))


@solvers
def test_max_num_steps_exceeded_adaptive(odeint):
    with pytest.raises(helpers.SolveError, match=r"reached max_num_steps=50 at t=\S+ before reaching t=10") as info:
        odeint(stiff, y0_(0.0), t_(0.0, 10.0), options=dict(max_num_steps=50))
    message = str(info.value)
    assert "may be stiff" in message
    (stopped,) = times_in(message)[:1]
    assert 0.0 < stopped < 10.0
    next_call_works()


@solvers
def test_max_num_steps_exceeded_fixed(odeint):
    with pytest.raises(helpers.SolveError, match=r"needs 1000 steps from t=0 to t=10, more than max_num_steps=100"):
        odeint(decay, y0_(), t_(0.0, 10.0), method="euler", options=dict(step_size=0.01, max_num_steps=100))
    next_call_works()


def test_solve_error_is_a_value_error():
    assert issubclass(helpers.SolveError, ValueError)


def test_adjoint_backward_solve_that_cannot_finish():
    """The backward solve runs out of steps: a SolveError from backward, then all is well."""
    f = LinearODE(torch.tensor([[-0.1, 1.0], [-1.0, -0.1]], dtype=F64))
    y0 = y0_().requires_grad_(True)
    ys = helpers.odeint_adjoint(f, y0, t_(0.0, 5.0), adjoint_options=dict(max_num_steps=3))
    with pytest.raises(helpers.SolveError, match="max_num_steps=3"):
        ys.sum().backward()
    next_call_works()


# --- devices -----------------------------------------------------------------------------------


def _other_devices():
    params = [pytest.param("meta", id="meta")]
    params.append(pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="CUDA is not available")))
    return params


@solvers
@pytest.mark.parametrize("other", _other_devices())
def test_tensors_on_different_devices(odeint, other):
    other = torch.device(other)
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match=rf"t is on {other.type}\S* but y0 is on cpu; put both on the same device"):
        odeint(decay, y0_(), t_(device=other))
    with pytest.raises(ValueError, match=rf"t is on cpu but y0 is on {other.type}"):
        odeint(decay, y0_(device=other), t_())
    with pytest.raises(ValueError, match=rf"func's parameter 'A' is on {other.type}\S* but y0 is on {cpu}"):
        odeint(LinearODE(torch.eye(2, dtype=F64, device=other)), y0_(), t_())
    with pytest.raises(ValueError, match=rf"func\(t, y\) returned a tensor on {other.type}\S* but y0 is on cpu"):
        odeint(lambda t, y: torch.zeros(2, dtype=F64, device=other), y0_(), t_())
    next_call_works()


@pytest.mark.parametrize("other", _other_devices())
def test_adjoint_params_on_another_device(other):
    p = torch.ones(2, dtype=F64, device=other, requires_grad=True)
    with pytest.raises(ValueError, match=rf"a parameter of func is on {other}\S* but y0 is on cpu"):
        helpers.odeint_adjoint(decay, y0_(), t_(), adjoint_params=[p])
    next_call_works()


# --- higher-order gradients through the adjoint -----------------------------------------------


def test_second_order_gradient_through_adjoint_is_refused():
    f = LinearODE(torch.tensor([[-0.5, 1.0], [-1.0, -0.3]], dtype=F64))
    y0 = y0_().requires_grad_(True)
    ys = helpers.odeint_adjoint(f, y0, t_(0.0, 0.5, 1.0))
    loss = (ys ** 2).sum()
    with pytest.raises(ValueError, match=r"does not give higher-order gradients \(create_graph=True.*helpers.odeint"):
        (g,) = torch.autograd.grad(loss, [y0], create_graph=True)
        g.sum().backward()
    next_call_works()
    # first-order gradients on a fresh graph still work, and so does odeint's create_graph
    ys = helpers.odeint(f, y0, t_(0.0, 0.5, 1.0))
    (g,) = torch.autograd.grad((ys ** 2).sum(), [y0], create_graph=True)
    g.sum().backward()
    assert y0.grad is not None and torch.isfinite(y0.grad).all()


def test_no_assertion_errors_anywhere():
    """A sweep of bad calls: each raises its own ValueError/TypeError (never an AssertionError, which
    pytest.raises below would not catch) with a message naming the argument."""
    bad_calls = [
        (lambda o: o(decay, y0_(), t_(1.0, 1.0)), ValueError, r"t must be strictly increasing or strictly decreasing"),
        (lambda o: o(decay, torch.tensor([1]), t_()), TypeError, r"y0 must be a real floating-point tensor"),
        (lambda o: o(decay, y0_(), t_(), method="nope"), ValueError, r"method='nope' is not a known method"),
        (lambda o: o(decay, y0_(), t_(), options=dict(step_sise=1)), ValueError, r"options has unknown key\(s\) \['step_sise'\]"),
        (lambda o: o(lambda t, y: y[0], y0_(), t_()), ValueError, r"func\(t, y\) returned shape \(\) but y0 has shape \(2,\)"),
        (lambda o: o(decay, y0_(), t_(), options=dict(first_step=float("inf"))), ValueError,
         r"options\['first_step'\] must be a positive finite number, got inf"),
        (lambda o: o(decay, y0_(), t_(), rtol=None), TypeError, r"rtol must be a non-negative number, got None"),
        (lambda o: o(decay, torch.empty(0, dtype=F64), t_(), method="nope"), ValueError, r"method='nope'|y0"),
        (lambda o: o(decay, y0_(), t_().reshape(2, 1)), ValueError, r"t must be 1-D, got a tensor of shape \(2, 1\)"),
        (lambda o: o(None, y0_(), t_()), TypeError, r"func must be callable"),
    ]
    for odeint in SOLVERS:
        for call, exc, match in bad_calls:
            with pytest.raises(exc, match=match):
                call(odeint)
    next_call_works()
