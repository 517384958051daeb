"""Tests of helpers.plotting: the grid, the arrows and the curves it draws."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from helpers.models import MLP, Spiral  # noqa: E402
from helpers.plotting import evaluate_on_grid, plot_trajectories, plot_vector_field  # noqa: E402
from helpers.problems import LinearODE  # noqa: E402

ROTATION = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)  # dz/dt = A z: (z1, z2) -> (-z2, z1)


@pytest.fixture
def ax():
    fig, ax = plt.subplots(figsize=(4, 3))
    yield ax
    plt.close(fig)


def test_grid_values_are_the_field():
    X, Y, U, V = evaluate_on_grid(LinearODE(ROTATION), (-1.0, 3.0), (-2.0, 2.0), n=5)
    assert X.shape == Y.shape == U.shape == V.shape == (5, 5)
    np.testing.assert_allclose(X[0], [-1.0, 0.0, 1.0, 2.0, 3.0])
    np.testing.assert_allclose(Y[:, 0], [-2.0, -1.0, 0.0, 1.0, 2.0])
    np.testing.assert_allclose(U, -Y)
    np.testing.assert_allclose(V, X)


def test_grid_uses_the_time_argument():
    def field(t, z):
        return torch.ones_like(z) * t

    _, _, U, V = evaluate_on_grid(field, (0, 1), (0, 1), n=3, t=2.5)
    assert np.all(U == 2.5) and np.all(V == 2.5)


def test_grid_follows_the_dtype_of_the_weights():
    torch.manual_seed(0)
    net32 = MLP((2, 16, 2), dtype=torch.float32)
    X, _, U, _ = evaluate_on_grid(net32, (-1, 1), (-1, 1), n=4)
    assert U.dtype == np.float32 and X.dtype == np.float32
    z = torch.tensor([[-1.0, -1.0]], dtype=torch.float32)
    np.testing.assert_allclose(U[0, 0], net32(None, z)[0, 0].item(), rtol=1e-6)


def test_quiver_draws_one_arrow_per_grid_point(ax):
    quiver = plot_vector_field(ax, LinearODE(ROTATION), (-2.0, 2.0), (-1.0, 1.0), n=7)
    assert quiver.N == 49
    assert quiver.X.min() == -2.0 and quiver.X.max() == 2.0
    assert quiver.Y.min() == -1.0 and quiver.Y.max() == 1.0
    np.testing.assert_allclose(quiver.U, -quiver.Y)
    np.testing.assert_allclose(quiver.V, quiver.X)
    assert ax.get_xlim() == (-2.0, 2.0) and ax.get_ylim() == (-1.0, 1.0)
    assert ax.get_xlabel() == "$z_1$" and ax.get_ylabel() == "$z_2$"
    assert list(ax.collections) == [quiver]


def test_normalized_arrows_have_unit_length_and_speed_as_colour(ax):
    spiral = Spiral(dtype=torch.float64)
    quiver = plot_vector_field(ax, spiral, (-2.0, 2.0), (-2.0, 2.0), n=6, normalize=True)
    lengths = np.hypot(quiver.U, quiver.V)
    _, _, U, V = evaluate_on_grid(spiral, (-2.0, 2.0), (-2.0, 2.0), n=6)
    speed = np.hypot(U, V).ravel()
    assert np.all(speed > 0)  # no grid point of a 6x6 grid on [-2, 2]^2 is the origin
    np.testing.assert_allclose(lengths, 1.0)
    np.testing.assert_allclose(quiver.get_array(), speed)
    assert speed.max() / speed.min() > 100  # the spiral's speeds span orders of magnitude


def test_one_line_per_trajectory_through_the_data(ax):
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    z0 = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.5]], dtype=torch.float64)
    ys = LinearODE(ROTATION).exact(z0, t).detach()  # (11, 3, 2)
    lines = plot_trajectories(ax, ys, color="C3", label="exact")
    assert len(lines) == 3
    for k, line in enumerate(lines):
        np.testing.assert_allclose(line.get_xdata(), ys[:, k, 0].numpy())
        np.testing.assert_allclose(line.get_ydata(), ys[:, k, 1].numpy())
        assert line.get_color() == "C3"
    assert [line.get_label() for line in lines][0] == "exact"
    assert not lines[1].get_label().startswith("exact")
    (starts,) = ax.collections
    np.testing.assert_allclose(starts.get_offsets(), z0.numpy())


def test_single_trajectory_and_no_start_marker(ax):
    ys = np.stack([np.linspace(0, 1, 5), np.linspace(2, 3, 5)], axis=1)  # (5, 2)
    lines = plot_trajectories(ax, ys, mark_start=False, lw=3)
    assert len(lines) == 1 and lines[0].get_linewidth() == 3
    np.testing.assert_allclose(lines[0].get_xydata(), ys)
    assert len(ax.collections) == 0


@pytest.mark.parametrize("shape", [(5,), (5, 3), (5, 2, 3), (5, 1, 2, 2)])
def test_trajectories_reject_other_shapes(ax, shape):
    with pytest.raises(ValueError, match="shape"):
        plot_trajectories(ax, np.zeros(shape))


def test_grid_rejects_bad_limits_and_fields():
    with pytest.raises(ValueError, match="xlim"):
        evaluate_on_grid(LinearODE(ROTATION), (1.0, -1.0), (0.0, 1.0))
    with pytest.raises(ValueError, match="n must be"):
        evaluate_on_grid(LinearODE(ROTATION), (0.0, 1.0), (0.0, 1.0), n=1)
    with pytest.raises(ValueError, match="same shape"):
        evaluate_on_grid(lambda t, z: z[:, :1], (0.0, 1.0), (0.0, 1.0), n=3)
