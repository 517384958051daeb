"""Tests for helpers.memory: exact byte counts on small graphs, and growth with the steps of a solve."""
import gc
import os
import weakref

import pytest
import torch

import helpers
from helpers.memory import SavedTensors, fit_line, graph_memory, saved_tensors
from helpers.models import MLP


def leaf(*shape, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype).requires_grad_(True)


def test_product_of_two_leaves_saves_both():
    x, y = leaf(3, 4), leaf(3, 4)
    measured = saved_tensors(lambda: x * y, keep_result=True)
    assert isinstance(measured, SavedTensors)
    assert measured.nbytes == 2 * 3 * 4 * 8
    assert measured.count == 2
    assert torch.equal(measured.result, x * y)
    assert saved_tensors(lambda: x * y).result is None  # dropped unless asked for


def test_product_saves_only_what_backward_needs():
    x, y = leaf(3, 4), torch.randn(3, 4, dtype=torch.float64)
    # only dL/dx = grad * y is needed, so only y is kept
    assert graph_memory(lambda: x * y) == 3 * 4 * 8


def test_float32_counts_four_bytes_per_entry():
    x, y = leaf(5, 7, dtype=torch.float32), leaf(5, 7, dtype=torch.float32)
    assert graph_memory(lambda: x * y) == 2 * 5 * 7 * 4


def test_a_storage_saved_twice_counts_once():
    x = leaf(10)
    measured = saved_tensors(lambda: x * x)
    assert measured.nbytes == 10 * 8
    assert measured.count == 1


def test_a_saved_view_counts_its_whole_storage():
    x = leaf(100)
    base = x * 1.0  # a new storage of 100 entries, not a leaf
    assert graph_memory(lambda: base[:10].sin()) == 100 * 8


def test_a_discarded_graph_is_not_counted():
    x = leaf(6)

    def compute():
        thrown_away = (2 * x).sin()  # saves 2x, then the graph is freed with it
        del thrown_away
        return x.exp()  # saves its output: 6 entries

    assert graph_memory(compute) == 6 * 8


def test_a_kept_result_backpropagates_like_an_unmeasured_one():
    # exp and tanh save their outputs: the graph gets detached aliases of them, and the
    # gradients (first and second order) must be those of the same graph built without hooks
    x = leaf(7)
    measured = saved_tensors(lambda: x.exp().tanh().sum(), keep_result=True)
    assert measured.nbytes == 2 * 7 * 8
    grad, = torch.autograd.grad(measured.result, x, create_graph=True)
    second, = torch.autograd.grad(grad.sum(), x)
    y = x.detach().clone().requires_grad_(True)
    grad_ref, = torch.autograd.grad(y.exp().tanh().sum(), y, create_graph=True)
    second_ref, = torch.autograd.grad(grad_ref.sum(), y)
    assert torch.allclose(grad, grad_ref, rtol=1e-14, atol=0)
    assert torch.allclose(second, second_ref, rtol=1e-14, atol=0)


def test_the_measured_graph_is_freed_after_measuring():
    # exp saves its output; a hook that handed the graph that very tensor made a reference
    # cycle (tensor -> its node -> the saved tensor) that Python's garbage collector cannot
    # see, so every measured graph stayed alive
    x = leaf(50)
    outputs = []

    def compute():
        out = torch.tanh(x * 2.0).exp()
        outputs.append(weakref.ref(out))
        return out.sum()

    assert graph_memory(compute) == 2 * 50 * 8
    gc.collect()
    assert outputs[-1]() is None
    kept = saved_tensors(compute, keep_result=True)  # asked for: the graph stays usable
    grad, = torch.autograd.grad(kept.result, x)
    assert torch.allclose(grad, 2 * (1 - torch.tanh(2 * x) ** 2) * torch.tanh(2 * x).exp())
    del kept
    gc.collect()
    assert outputs[-1]() is None


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads Linux's /proc")
def test_process_memory_returns_to_its_baseline_after_measuring():
    def resident_mib():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * 4096 / 2**20

    torch.manual_seed(0)
    field = MLP((2, 32, 2), dtype=torch.float64)
    z0 = torch.randn(256, 2, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    options = dict(method="rk4", options=dict(step_size=1 / 20))
    per_call = graph_memory(helpers.odeint, field, z0, t, **options)  # warm-up
    assert per_call == pytest.approx(20 * 4 * 256 * 34 * 8, rel=0.01)  # 5.3 MiB
    gc.collect()
    baseline = resident_mib()
    for _ in range(8):
        assert graph_memory(helpers.odeint, field, z0, t, **options) == per_call
    gc.collect()
    # eight kept graphs would add 42 MiB
    assert resident_mib() - baseline < 16


class _Fast(torch.nn.Module):
    # an MLP field sped up by a factor, so that dopri5 rejects some steps
    def __init__(self, field, factor):
        super().__init__()
        self.field, self.factor = field, factor

    def forward(self, t, z):
        return self.factor * self.field(t, z)


def test_a_rejected_step_adds_no_memory():
    torch.manual_seed(0)
    batch, hidden = 32, 64
    field = _Fast(MLP((2, hidden, 2), dtype=torch.float64), 10.0)
    z0 = torch.randn(batch, 2, dtype=torch.float64)
    t = torch.tensor([0.0, 5.0], dtype=torch.float64)
    # six new evaluations per accepted step (FSAL), each keeping batch x (2 + hidden) numbers
    per_accepted = 6 * batch * (2 + hidden) * 8
    rest, rejected_total = set(), 0
    for rtol in (1e-1, 1e-2, 1e-3):
        stats = helpers.SolveStats()
        nbytes = graph_memory(
            lambda: helpers.odeint(field, z0, t, rtol=rtol, atol=rtol / 100, stats=stats)[-1].sum())
        rejected_total += stats.steps_rejected_forward
        rest.add(nbytes - per_accepted * stats.steps_accepted_forward)
    assert rejected_total >= 3  # the check below means something
    # what is left over is the same for every run (the weights), whatever was rejected
    assert len(rest) == 1
    assert 0 <= rest.pop() < per_accepted


def test_no_graph_no_memory():
    assert graph_memory(lambda: torch.randn(5) * torch.randn(5)) == 0
    x = leaf(5)
    with torch.no_grad():
        assert graph_memory(lambda: x * x) == 0


def test_loop_memory_grows_exactly_linearly():
    x = leaf(50)

    def chain(n):
        z = x
        for _ in range(n):
            z = torch.sin(z)  # each sin keeps its input
        return z

    memory = [graph_memory(chain, n) for n in (1, 2, 4, 8, 16)]
    assert memory == [n * 50 * 8 for n in (1, 2, 4, 8, 16)]
    fit = fit_line([1, 2, 4, 8, 16], memory)
    assert fit.slope == pytest.approx(400.0)
    assert fit.intercept == pytest.approx(0.0, abs=1e-9)
    assert fit.r_squared == pytest.approx(1.0)


def test_backprop_through_rk4_grows_by_four_evaluations_per_step():
    torch.manual_seed(0)
    batch, hidden = 32, 16
    field = MLP((2, hidden, 2), dtype=torch.float64)
    z0 = torch.randn(batch, 2, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    steps = [5, 10, 20, 40]
    memory = [graph_memory(helpers.odeint, field, z0, t, method="rk4", options=dict(step_size=1 / n)) for n in steps]
    fit = fit_line(steps, memory)
    assert fit.r_squared > 0.9999
    # each evaluation keeps the first layer's input (batch x 2) and the tanh output (batch x hidden)
    per_step = 4 * batch * (2 + hidden) * 8
    assert fit.slope == pytest.approx(per_step, rel=1e-2)
    assert memory[-1] / memory[0] == pytest.approx(8.0, rel=0.02)


def test_adjoint_graph_memory_does_not_depend_on_steps():
    torch.manual_seed(0)
    field = MLP((2, 16, 2), dtype=torch.float64)
    z0 = torch.randn(32, 2, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    memory = {graph_memory(helpers.odeint_adjoint, field, z0, t, method="rk4", options=dict(step_size=1 / n))
              for n in (5, 10, 20, 40)}
    # the states at the two requested times and the times themselves
    assert memory == {2 * 32 * 2 * 8 + 2 * 8}


def test_fit_line_values_and_errors():
    fit = fit_line([0, 1, 2, 3], [1, 3, 5, 7.5])
    assert fit.slope == pytest.approx(2.15)
    assert fit.intercept == pytest.approx(0.9)
    assert 0.99 < fit.r_squared < 1.0
    assert fit(10) == pytest.approx(22.4)
    assert fit_line([1, 2], [3, 3]).r_squared == 1.0
    with pytest.raises(ValueError):
        fit_line([1, 1], [2, 3])
    with pytest.raises(ValueError):
        fit_line([1, 2, 3], [1, 2])
    with pytest.raises(ValueError):
        fit_line([1], [1])
