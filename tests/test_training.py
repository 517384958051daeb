"""helpers.training: the spiral data, the windows, one iteration and the training loop."""
from __future__ import annotations

import copy

import pytest
import torch

import helpers
from helpers.models import Spiral
from helpers.training import (
    CubeMLP,
    Trajectory,
    make_spiral_data,
    mse,
    sample_windows,
    train,
    training_step,
)

F64 = torch.float64


def small_data(device="cpu"):
    return make_spiral_data(60, 1.5, dtype=F64, device=device)


def test_spiral_data_solves_the_spiral(device):
    data = make_spiral_data(101, 2.0, dtype=F64, device=device)
    assert isinstance(data, Trajectory)
    assert data.t.shape == (101,) and data.z.shape == (101, 2)
    assert data.z.dtype == F64 and data.z.device.type == torch.device(device).type
    assert data.t[0].item() == 0.0 and data.t[-1].item() == 2.0
    assert torch.equal(data.z[0], torch.tensor([2.0, 0.0], dtype=F64, device=device))
    # the samples satisfy dz/dt = z**3 @ A: a fourth-order finite difference agrees with the field
    from helpers.quadrature import time_derivative

    dzdt = time_derivative(data.z, data.t)
    field = Spiral(dtype=F64, device=device)(data.t[0], data.z)
    assert ((dzdt - field).norm() / field.norm()).item() < 1e-3
    # and the trajectory is the one a fresh tight solve gives
    again = helpers.odeint(Spiral(dtype=F64, device=device), data.z[0], data.t, rtol=1e-11, atol=1e-12)
    assert (again - data.z).abs().max().item() < 1e-7


def test_spiral_data_arguments():
    with pytest.raises(ValueError, match="n_times"):
        make_spiral_data(1)
    with pytest.raises(ValueError, match="t_end"):
        make_spiral_data(10, 0.0)


def test_cube_mlp_reads_cubes_and_starts_small():
    torch.manual_seed(0)
    f = CubeMLP(hidden=400, dtype=F64)
    z = torch.randn(5, 2, dtype=F64)
    assert torch.allclose(f(torch.tensor(0.0), z), f.mlp(None, z ** 3))
    w1, b1, w2, b2 = f.parameters()
    assert w1.shape == (400, 2) and w2.shape == (2, 400)
    assert b1.abs().max().item() == 0.0 and b2.abs().max().item() == 0.0
    assert abs(torch.cat([w1.reshape(-1), w2.reshape(-1)]).std().item() - 0.1) < 0.01
    assert sum(p.numel() for p in CubeMLP().parameters()) == 2 * 50 + 50 + 50 * 2 + 2


def test_sample_windows_shapes_and_contents(device):
    data = small_data(device)
    g = torch.Generator().manual_seed(3)
    z0, t, targets = sample_windows(data.t, data.z, batch_size=7, window=5, generator=g)
    assert z0.shape == (7, 2) and t.shape == (5,) and targets.shape == (5, 7, 2)
    assert z0.device == data.z.device and t.device == data.t.device
    assert torch.equal(targets[0], z0)
    assert torch.allclose(t, data.t[:5] - data.t[0])
    # every window is a run of consecutive samples, and the starting points are distinct
    starts = []
    for b in range(7):
        (hits,) = torch.nonzero((data.z == z0[b]).all(dim=1), as_tuple=True)
        start = hits[0].item()
        starts.append(start)
        assert torch.equal(targets[:, b], data.z[start:start + 5])
    assert len(set(starts)) == 7
    assert max(starts) <= len(data.t) - 5


def test_sample_windows_repeatable_and_checked():
    data = small_data()
    a = sample_windows(data.t, data.z, 4, 3, torch.Generator().manual_seed(1))
    b = sample_windows(data.t, data.z, 4, 3, torch.Generator().manual_seed(1))
    c = sample_windows(data.t, data.z, 4, 3, torch.Generator().manual_seed(2))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    # every window fits: with batch_size equal to the number of starts, all starts are used
    n_starts = len(data.t) - 3 + 1
    z0, _, _ = sample_windows(data.t, data.z, n_starts, 3, torch.Generator().manual_seed(0))
    assert len({tuple(row.tolist()) for row in z0}) == n_starts
    with pytest.raises(ValueError, match="batch_size"):
        sample_windows(data.t, data.z, n_starts + 1, 3)
    with pytest.raises(ValueError, match="window"):
        sample_windows(data.t, data.z, 2, 1)
    with pytest.raises(ValueError, match="shape"):
        sample_windows(data.t, data.z[:-1], 2, 3)


def test_training_step_fills_gradients_and_lowers_the_loss():
    torch.manual_seed(0)
    data = small_data()
    f = CubeMLP(dtype=F64)
    z0, t, targets = sample_windows(data.t, data.z, 8, 6, torch.Generator().manual_seed(0))
    optimizer = torch.optim.SGD(f.parameters(), lr=1e-3)
    stats = helpers.SolveStats()
    before = training_step(f, optimizer, z0, t, targets, stats=stats)
    assert isinstance(before, float)
    assert stats.nfe_forward > 0 and stats.nfe_backward > 0       # the adjoint ran backward
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in f.parameters())
    with torch.no_grad():
        after = mse(helpers.odeint(f, z0, t, rtol=1e-5, atol=1e-6), targets).item()
    assert after < before
    # the gradient it computes is the one backpropagation gives (lr = 0 leaves the weights alone)
    g = copy.deepcopy(f)
    loss = mse(helpers.odeint(g, z0, t, rtol=1e-10, atol=1e-12), targets)
    reference = torch.autograd.grad(loss, list(g.parameters()))
    f.zero_grad()
    training_step(f, torch.optim.SGD(f.parameters(), lr=0.0), z0, t, targets, rtol=1e-10, atol=1e-12)
    for p, r in zip(f.parameters(), reference):
        assert ((p.grad - r).norm() / r.norm()).item() < 1e-6


def test_train_lowers_the_loss_and_is_repeatable(device):
    data = small_data(device)

    def run(seed, init_seed=0, **kwargs):
        torch.manual_seed(init_seed)
        f = CubeMLP(dtype=F64, device=device)
        return train(f, data, iterations=30, batch_size=8, window=5, seed=seed, **kwargs), f

    history, f = run(0)
    assert len(history) == 30 and all(isinstance(x, float) for x in history)
    assert sum(history[-5:]) / 5 < 0.5 * sum(history[:5]) / 5
    again, g = run(0)
    assert again == history
    assert all(torch.equal(p, q) for p, q in zip(f.parameters(), g.parameters()))
    other, _ = run(1)
    assert other != history


def test_train_callback_solver_and_progress():
    data = small_data()
    torch.manual_seed(0)
    seen = []
    f = CubeMLP(dtype=F64)
    history = train(f, data, iterations=6, batch_size=4, window=4, solver=helpers.odeint, progress=True,
                    callback=lambda i, func, loss: seen.append((i, func, loss)))
    assert [i for i, _, _ in seen] == list(range(6))
    assert all(func is f for _, func, _ in seen)
    assert [loss for _, _, loss in seen] == history
    # backpropagation and the adjoint follow the same path to within the solver tolerance
    torch.manual_seed(0)
    g = CubeMLP(dtype=F64)
    adjoint_history = train(g, data, iterations=6, batch_size=4, window=4, rtol=1e-10, atol=1e-12)
    torch.manual_seed(0)
    h = CubeMLP(dtype=F64)
    backprop_history = train(h, data, iterations=6, batch_size=4, window=4, solver=helpers.odeint,
                             rtol=1e-10, atol=1e-12)
    assert max(abs(a - b) / b for a, b in zip(adjoint_history, backprop_history)) < 1e-6
    with pytest.raises(ValueError, match="iterations"):
        train(f, data, iterations=0)
