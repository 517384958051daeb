"""helpers.clock: the descent loop and central differences behind the chapter on fitting times."""
from __future__ import annotations

import math

import pytest
import torch

import helpers
from helpers.clock import Descent, central_difference, descend


def quadratic(a, c):
    """L(x) = a/2 |x - c|^2, whose gradient descent contracts by exactly 1 - lr a per step."""
    def loss_and_grad(x):
        return 0.5 * a * ((x - c) ** 2).sum(), a * (x - c)
    return loss_and_grad


def test_descend_follows_the_exact_contraction():
    c = torch.tensor([1.0, -2.0], dtype=torch.float64)
    x0 = torch.tensor([3.0, 0.5], dtype=torch.float64)
    out = descend(quadratic(2.0, c), x0, lr=0.2, steps=6)
    assert isinstance(out, Descent)
    assert out.xs.shape == (7, 2) and out.losses.shape == (7,) and out.grads.shape == (6, 2)
    for k in range(7):
        expected = c + (1 - 0.2 * 2.0) ** k * (x0 - c)
        assert torch.allclose(out.xs[k], expected, rtol=0, atol=1e-14)
        assert math.isclose(out.losses[k].item(), ((out.xs[k] - c) ** 2).sum().item(), rel_tol=1e-12)
    assert torch.allclose(out.grads[0], 2.0 * (x0 - c))
    assert torch.equal(out.xs[0], x0)


def test_descend_with_the_sign_flipped_walks_away():
    c = torch.tensor([0.0], dtype=torch.float64)
    loss_and_grad = quadratic(1.0, c)
    out = descend(lambda x: (loss_and_grad(x)[0], -loss_and_grad(x)[1]),
                  torch.tensor([0.1], dtype=torch.float64), lr=0.5, steps=5)
    assert torch.allclose(out.xs[:, 0], 0.1 * 1.5 ** torch.arange(6, dtype=torch.float64))
    assert (out.losses.diff() > 0).all()


def test_descend_does_not_touch_its_start_or_pass_a_live_tensor():
    x0 = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    seen = []

    def loss_and_grad(x):
        seen.append(x)
        return (x ** 2).sum(), 2 * x.detach()

    out = descend(loss_and_grad, x0, lr=0.1, steps=2)
    assert x0.item() == 1.0 and not out.xs.requires_grad
    assert all(not s.requires_grad for s in seen) and len(seen) == 3


def test_descend_fits_a_final_time_with_odeint_adjoint():
    """dL/dt1 from odeint_adjoint drives t1 to the time at which e^{-t} reaches 1/4."""
    z0 = torch.tensor([1.0], dtype=torch.float64)
    target = torch.tensor([0.25], dtype=torch.float64)

    def loss_and_grad(x):
        t = torch.cat([torch.zeros(1, dtype=torch.float64), x]).requires_grad_(True)
        z = helpers.odeint_adjoint(lambda s, y: -y, z0, t, rtol=1e-10, atol=1e-12)
        loss = 0.5 * ((z[-1] - target) ** 2).sum()
        loss.backward()
        return loss.item(), t.grad[1:]

    out = descend(loss_and_grad, torch.tensor([1.0], dtype=torch.float64), lr=14.0, steps=12)
    assert abs(out.xs[-1].item() - math.log(4.0)) < 1e-7
    fd = central_difference(lambda x: loss_and_grad(x)[0], out.xs[0], eps=1e-5)
    assert abs(fd.item() - out.grads[0].item()) < 1e-7 * abs(fd.item())


def test_central_difference_is_exact_for_quadratics_and_second_order_otherwise():
    x = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    w = torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64)
    g = central_difference(lambda v: (w * v ** 2).sum() + v.sum(), x, eps=1e-3)
    assert torch.allclose(g, 2 * w * x + 1, rtol=0, atol=1e-10)
    for eps in (1e-2, 5e-3):
        g = central_difference(lambda v: (v ** 3).sum(), x, eps=eps)
        assert torch.allclose(g - 3 * x ** 2, torch.full_like(x, eps ** 2), rtol=1e-6)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(x0=[1.0]), TypeError, "x0 must be a tensor"),
    (dict(x0=torch.tensor(1.0)), ValueError, "x0 must be a non-empty 1-D"),
    (dict(x0=torch.tensor([1, 2])), ValueError, "floating-point"),
    (dict(lr=0.0), ValueError, "lr must be a positive"),
    (dict(lr="0.1"), TypeError, "lr must be a positive number"),
    (dict(steps=0), ValueError, "steps must be a positive integer"),
    (dict(steps=2.0), TypeError, "steps must be a positive integer"),
    (dict(loss_and_grad=3), TypeError, "loss_and_grad must be callable"),
])
def test_descend_rejects_bad_arguments(kwargs, error, match):
    args = dict(loss_and_grad=quadratic(1.0, torch.zeros(1)), x0=torch.ones(1), lr=0.1, steps=2)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        descend(**args)


def test_descend_rejects_bad_gradients():
    with pytest.raises(ValueError, match="gradient of shape"):
        descend(lambda x: (0.0, torch.zeros(2)), torch.ones(1), 0.1, 1)
    with pytest.raises(TypeError, match="grad tensor"):
        descend(lambda x: (0.0, 1.0), torch.ones(1), 0.1, 1)
    with pytest.raises(ValueError, match="not finite at step 1: lower lr"):
        descend(lambda x: ((x ** 2).sum() if x.abs().max() < 10 else float("inf"), 2 * x),
                torch.ones(1, dtype=torch.float64), 10.0, 3)


def test_central_difference_rejects_bad_arguments():
    with pytest.raises(TypeError, match="loss must be callable"):
        central_difference(None, torch.ones(1))
    with pytest.raises(ValueError, match="eps must be a positive"):
        central_difference(lambda v: v.sum(), torch.ones(1), eps=-1e-3)
    with pytest.raises(ValueError, match="x must be a non-empty 1-D"):
        central_difference(lambda v: v.sum(), torch.ones(2, 2))
