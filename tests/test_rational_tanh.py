"""The compiled mode's float32 tanh (helpers/rational_tanh.py): accuracy, and where the pass applies."""
import math

import pytest
import torch

from helpers import rational_tanh as rt
from helpers.steppers import compile_options


def _grid(dtype):
    # every region: around 0, the bend, the tails, and past the clamp at 9
    return torch.cat([torch.linspace(-12, 12, 2_000_001, dtype=torch.float64),
                      torch.logspace(-30, 0, 10_001, dtype=torch.float64)]).to(dtype)


def test_rational_tanh_is_within_4e7_of_tanh_in_float32():
    x = _grid(torch.float32)
    exact = torch.tanh(x.double())
    error = (rt.rational_tanh(x).double() - exact).abs().max().item()
    assert error < 4e-7
    # the exponential form the pass replaces (inductor's use_decompose_tanh) is no closer
    exp_form = (2 / (1 + torch.exp(-2 * x)) - 1).double()
    assert (exp_form - exact).abs().max().item() > 1e-7


def test_rational_tanh_keeps_tanh_shape():
    x = _grid(torch.float32)
    y = rt.rational_tanh(x)
    assert y.abs().max().item() <= 1.0
    assert torch.equal(rt.rational_tanh(-x), -y)  # odd
    # increasing up to float32 rounding: a step back is never larger than the error bound
    assert (y[1:2_000_001] - y[:2_000_000]).min().item() > -5e-7
    assert rt.rational_tanh(torch.tensor([20.0, -20.0])).tolist() == [1.0, -1.0]


def test_fit_error_in_float64_is_about_2e8():
    x = torch.linspace(0, 9, 200_001, dtype=torch.float64)
    error = (rt.rational_tanh(x) - torch.tanh(x)).abs().max().item()
    assert 1e-9 < error < 3e-8


def _traced(dtype):
    def f(x):
        return torch.tanh(x) * 2 + torch.tanh(x + 1)
    from torch.fx.experimental.proxy_tensor import make_fx
    return make_fx(f, tracing_mode="fake")(torch.zeros(4, dtype=dtype))


def test_rewrite_replaces_float32_tanh_and_keeps_the_values():
    gm = _traced(torch.float32)
    assert rt.rewrite_tanh(gm.graph) == 2
    gm.recompile()
    assert not any(n.target is torch.ops.aten.tanh.default for n in gm.graph.nodes)
    x = torch.linspace(-5, 5, 4)
    expected = torch.tanh(x) * 2 + torch.tanh(x + 1)
    assert torch.allclose(gm(x), expected, atol=1e-6, rtol=0)


def test_rewrite_leaves_float64_tanh_alone():
    gm = _traced(torch.float64)
    assert rt.rewrite_tanh(gm.graph) == 0
    assert sum(n.target is torch.ops.aten.tanh.default for n in gm.graph.nodes) == 2


@pytest.mark.skipif(rt.RationalTanhPass is None, reason="this torch has no CustomGraphPass")
def test_pass_is_in_the_cpu_options_only_and_keys_the_cache():
    options = compile_options("default", "cpu")
    assert isinstance(options["post_grad_custom_pre_pass"], rt.RationalTanhPass)
    assert "post_grad_custom_pre_pass" not in compile_options("default", "cuda")
    assert rt.RationalTanhPass().uuid() == rt.RationalTanhPass().uuid()
    assert len(rt.RationalTanhPass().uuid()) == 64


@pytest.mark.skipif(rt.RationalTanhPass is None, reason="this torch has no CustomGraphPass")
def test_compiled_float32_tanh_uses_the_rational_form():
    # compiled with helpers' options, tanh gives the rational form's values, not inductor's
    x = torch.linspace(-12, 12, 100_001)
    fn = torch.compile(lambda v: torch.tanh(v), options=compile_options("default", "cpu"), dynamic=False)
    got = fn(x)
    assert torch.allclose(got, rt.rational_tanh(x), atol=2e-7, rtol=0)
    assert (got.double() - torch.tanh(x.double())).abs().max().item() < 4e-7
    assert math.isclose(fn(torch.tensor([0.5]))[0].item(), math.tanh(0.5), abs_tol=4e-7)
