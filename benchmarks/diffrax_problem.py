"""diffrax (JAX) on the speed benchmark's problem: the reference that benchmarks/speed.py times helpers against.

    python benchmarks/diffrax_problem.py       # self-check on problem S: compile time, run time, gradients

JAX and diffrax are an optional benchmark dependency (benchmarks/requirements-diffrax.txt), never
a runtime one: helpers does not import them. This module imports without them, and
:func:`available` says whether they are there. :func:`make_case` copies the weights of a
``helpers.models.MLP`` and the initial state into JAX, builds the same vector field and the same
loss ``mean(z(T)**2)``, and jit-compiles the loss and its gradient with respect to the weights
through ``diffrax.BacksolveAdjoint`` (the continuous adjoint, as ``helpers.odeint_adjoint``) or
diffrax's default ``RecursiveCheckpointAdjoint`` (differentiating the solver's own steps, with
checkpoints: the counterpart of backpropagation through ``helpers.odeint``).

Introduced in the chapter "Appendix: measured performance" (the speed benchmark).
"""
from __future__ import annotations

import math
import os
import statistics
import sys
import time
import warnings

# The benchmark runs PyTorch on one thread, so XLA must run on one too, or the comparison
# measures core counts instead of solvers. XLA reads these flags once, when JAX creates its CPU
# client, hence they are set before ``import jax``; a value the caller already put in XLA_FLAGS
# for one of them is kept.
_ONE_THREAD_FLAGS = ("--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1")


def _set_one_thread_flags() -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    for flag in _ONE_THREAD_FLAGS:
        if flag.split("=")[0].lstrip("-") not in flags:
            flags = f"{flags} {flag}".strip()
    os.environ["XLA_FLAGS"] = flags
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _create_backend_on_one_cpu() -> None:
    """Create JAX's CPU client while this thread may run on one CPU only, then undo the pinning.

    The flags above no longer suffice: with jaxlib 0.10.2 a large jitted matmul still kept two
    threads busy (run-queue time of all threads / wall time = 2.0 on 2 cores; 1.0 after this).
    XLA's CPU runtime sizes its intra-op thread pool by the CPUs the process may run on when the
    client is created, so the client is created under a one-CPU affinity mask; afterwards every
    thread (the caller and the pool's new threads) gets the original mask back, so nothing stays
    pinned to a core, and the pool keeps its single thread.
    """
    if not hasattr(os, "sched_setaffinity") or not os.path.isdir("/proc/self/task"):
        jax.devices()  # not Linux: the flags are all there is
        return
    full = os.sched_getaffinity(0)
    before = set(os.listdir("/proc/self/task"))
    os.sched_setaffinity(0, {min(full)})  # pid 0: this thread only; new threads inherit it
    try:
        jax.devices()
    finally:
        os.sched_setaffinity(0, full)
        for task in set(os.listdir("/proc/self/task")) - before:
            try:
                os.sched_setaffinity(int(task), full)
            except OSError:  # the thread has exited
                pass


_JAX_WAS_IMPORTED = "jax" in sys.modules
_set_one_thread_flags()

try:
    import diffrax
    import jax
    import jax.numpy as jnp
    import numpy as np
except ImportError:  # JAX and diffrax are optional: available() reports it
    diffrax = None
else:
    from jax._src import xla_bridge as _xla_bridge  # no public way to ask whether the client exists

    if _JAX_WAS_IMPORTED and _xla_bridge.backends_are_initialized():
        warnings.warn("JAX's CPU backend was created before benchmarks/diffrax_problem.py was imported, "
                      "so XLA may use more than one thread; import this module first", RuntimeWarning,
                      stacklevel=2)
    else:
        _create_backend_on_one_cpu()

METHODS = ("dopri5", "rk4")
ADJOINTS = ("backsolve", "recursive_checkpoint")
# diffrax's own default max_steps: RecursiveCheckpointAdjoint needs a finite one, and sizes its
# checkpoints by it
CHECKPOINTED_MAX_STEPS = 4096


def available() -> bool:
    """Whether JAX and diffrax are installed, so that :func:`make_case` can run.

    **Returns:** ``True`` when ``jax`` and ``diffrax`` imported.
    """
    return diffrax is not None


def _rk4_solver():
    """diffrax's explicit Runge–Kutta machinery with the classical RK4 tableau (diffrax ships none).

    Built with diffrax's own custom-tableau mechanism (a subclass of ``AbstractERK`` carrying a
    ``ButcherTableau``). The method has no embedded error estimate; ``b_error`` is zero, which
    diffrax requires to sum to zero and which only fixed steps (``ConstantStepSize``) use.
    """
    global _ClassicalRK4
    if _ClassicalRK4 is None:
        rk4_tableau = diffrax.ButcherTableau(
            c=np.array([0.5, 0.5, 1.0]),
            a_lower=(np.array([0.5]), np.array([0.0, 0.5]), np.array([0.0, 0.0, 1.0])),
            b_sol=np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6]),
            b_error=np.zeros(4),
        )

        class ClassicalRK4(diffrax.AbstractERK):
            tableau = rk4_tableau
            interpolation_cls = diffrax.ThirdOrderHermitePolynomialInterpolation.from_k

            def order(self, terms):
                return 4

        _ClassicalRK4 = ClassicalRK4
    return _ClassicalRK4()


_ClassicalRK4 = None  # built on first use, once, so that jit caches see one class


def _initial_step(terms, t0, y0, args, func, order, rtol, atol, norm):
    """Hairer, Nørsett & Wanner's starting step (Solving ODEs I, II.4), as helpers and torchdiffeq take it.

    Written here because diffrax 0.7.2 does not run its own for ``dt0=None``: diffeqsolve wraps
    the term (``WrapTerm``) before the controller sees it, the controller's ``isinstance(terms,
    ODETerm)`` test fails, and every solve starts with a step of 0.01 (diffrax's fallback for
    SDEs). Two evaluations of ``f`` (helpers reuses one of them as the first stage; diffrax's
    first-same-as-last start evaluates ``f(t0, y0)`` once more).
    """
    scale = jax.tree_util.tree_map(lambda y: atol + rtol * jnp.abs(y), y0)

    def scaled(x):
        return jax.tree_util.tree_map(lambda a, s: a / s, x, scale)

    f0 = func(terms, t0, y0, args)
    d0, d1 = norm(scaled(y0)), norm(scaled(f0))
    small = (d0 < 1e-5) | (d1 < 1e-5)
    h0 = jnp.where(small, 1e-6, 0.01 * d0 / jnp.where(small, 1.0, d1))
    y1 = jax.tree_util.tree_map(lambda y, f: y + h0 * f, y0, f0)
    f1 = func(terms, t0 + h0, y1, args)
    d2 = norm(scaled(jax.tree_util.tree_map(lambda a, b: a - b, f1, f0))) / h0
    d = jnp.maximum(d1, d2)
    h1 = jnp.where(d <= 1e-15, jnp.maximum(1e-6, h0 * 1e-3),
                   (0.01 / jnp.where(d <= 1e-15, 1.0, d)) ** (1.0 / (order + 1)))
    return jax.lax.stop_gradient(jnp.minimum(100 * h0, h1))


_HairerPID = None


def _pid_controller(rtol, atol, order, norm=None):
    """diffrax's PID controller (an I controller by default), starting with the Hairer step."""
    global _HairerPID
    if _HairerPID is None:
        class HairerPID(diffrax.PIDController):
            method_order: int = 5

            def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
                if dt0 is None:
                    dt0 = _initial_step(terms, t0, y0, args, func, self.method_order,
                                        self.rtol, self.atol, self.norm)
                return super().init(terms, t0, t1, y0, dt0, args, func, error_order)

        _HairerPID = HairerPID
    kwargs = {} if norm is None else dict(norm=norm)
    return _HairerPID(rtol=rtol, atol=atol, method_order=order, **kwargs)


def versions() -> dict:
    """The installed ``{"jax": ..., "diffrax": ...}`` versions (call only when :func:`available`)."""
    return {"jax": jax.__version__, "diffrax": diffrax.__version__}


def _mlp_weights(torch_mlp):
    """The ``(weight, bias)`` pairs of a ``helpers.models.MLP``, checked to be Linear/Tanh/.../Linear."""
    import torch
    from torch import nn

    net = getattr(torch_mlp, "net", None)
    if not isinstance(torch_mlp, nn.Module) or not isinstance(net, nn.Sequential) or len(net) == 0:
        raise TypeError(f"torch_mlp must be a helpers.models.MLP (an nn.Module with an nn.Sequential 'net'), "
                        f"got {type(torch_mlp).__name__}")
    layers = list(net)
    for i, layer in enumerate(layers):
        expected = nn.Linear if i % 2 == 0 else nn.Tanh
        if not isinstance(layer, expected):
            raise TypeError(f"torch_mlp.net must alternate nn.Linear and nn.Tanh, starting and ending with "
                            f"nn.Linear; layer {i} is {type(layer).__name__}")
    if len(layers) % 2 == 0:
        raise TypeError("torch_mlp.net must end with an nn.Linear layer")
    linears = layers[::2]
    if any(lin.bias is None for lin in linears):
        raise TypeError("every nn.Linear in torch_mlp.net must have a bias")
    # The order of torch_mlp.parameters(): weight, bias, weight, bias, ...
    params = [p for lin in linears for p in (lin.weight, lin.bias)]
    if [id(p) for p in params] != [id(p) for p in torch_mlp.parameters()]:
        raise TypeError("torch_mlp must have no parameters besides the weights and biases of net's nn.Linear layers")
    if any(p.dtype not in (torch.float32, torch.float64) for p in params):
        raise TypeError("torch_mlp's parameters must be float32 or float64")
    return [np.asarray(p.detach().cpu().numpy(), dtype=np.float32) for p in params]


def _mlp(params, y):
    """``f(y)`` of the MLP in torch's layout: ``x W^T + b`` per layer, tanh between layers."""
    n = len(params) // 2
    for i in range(n):
        y = y @ params[2 * i].T + params[2 * i + 1]
        if i < n - 1:
            y = jnp.tanh(y)
    return y


class DiffraxCase:
    """One benchmark configuration in diffrax, compiled: ``run()`` gives the loss and its gradient.

    Built by :func:`make_case`, which also makes the first (compiling) call.

    **Attributes:**

    - `method`, `T`, `rtol`, `atol`, `step_size`, `num_fixed_steps`, `adjoint`: the
      configuration (``num_fixed_steps`` is the number of equal RK4 steps, ``None`` for dopri5;
      `adjoint` one of :data:`ADJOINTS`).
    - `compile_seconds`: wall time of the first call, compilation included, until its result was
      ready.
    - `forward_steps`: ``(accepted, rejected)`` steps of the forward solve in the latest run, as
      diffrax's ``sol.stats`` reports them (the backward solve's are not reported; :meth:`nfe`
      counts evaluations in both).
    """

    def __init__(self, params, y0, method, T, rtol, atol, step_size, num_fixed_steps, adjoint="backsolve"):
        self.method, self.T, self.rtol, self.atol, self.adjoint = method, T, rtol, atol, adjoint
        self.step_size, self.num_fixed_steps = step_size, num_fixed_steps
        self._params = [jnp.asarray(p) for p in params]
        self._y0 = jnp.asarray(y0)
        self._nfe = None
        self._grad_fn = jax.jit(jax.value_and_grad(self._loss_fn(counted=False), has_aux=True))
        start = time.perf_counter()
        jax.block_until_ready(self._grad_fn(self._params, self._y0))
        self.compile_seconds = time.perf_counter() - start
        self.forward_steps = None
        self.run()
        if num_fixed_steps is not None and self.forward_steps != (num_fixed_steps, 0):
            # diffrax derives its step count from dt0 itself; a rounding slip would silently
            # compare different discretisations.
            raise RuntimeError(f"diffrax took {self.forward_steps[0]} RK4 steps, not the {num_fixed_steps} "
                               f"helpers takes for T={T} and step_size={step_size}")

    def _loss_fn(self, counted):
        """``params -> (mean(z(T)**2), forward stats)``, differentiated by ``self.adjoint``."""
        calls = self._calls = []  # the time of every evaluation, when counted

        def vector_field(t, y, params):  # t ignored: the MLP is autonomous
            if counted:
                jax.debug.callback(lambda t: calls.append(float(t)), t)
            return _mlp(params, y)

        if self.method == "dopri5":
            solver = diffrax.Dopri5()
            forward_controller = _pid_controller(self.rtol, self.atol, order=5)
            # helpers' default for adaptive adjoints: the parameter-gradient channel stays out of
            # the step-acceptance norm (z and the costate are in it), at the forward tolerances.
            backward_controller = _pid_controller(self.rtol, self.atol, order=5,
                                                  norm=diffrax.adjoint_rms_seminorm)
            dt0, max_steps = None, 1_000_000
        else:
            solver = _rk4_solver()
            forward_controller = backward_controller = diffrax.ConstantStepSize()
            # Equal steps of T/n as helpers takes them; the backward solve runs them in reverse.
            dt0, max_steps = self.T / self.num_fixed_steps, self.num_fixed_steps + 16
        if self.adjoint == "backsolve":
            adjoint = diffrax.BacksolveAdjoint(solver=solver, stepsize_controller=backward_controller)
        else:  # diffrax's default: backpropagation through the steps, recomputed from checkpoints
            adjoint = diffrax.RecursiveCheckpointAdjoint()
            max_steps = min(max_steps, CHECKPOINTED_MAX_STEPS)
        term = diffrax.ODETerm(vector_field)

        def loss(params, y0):
            sol = diffrax.diffeqsolve(
                term, solver, t0=0.0, t1=self.T, dt0=dt0, y0=y0, args=params,
                saveat=diffrax.SaveAt(t1=True), stepsize_controller=forward_controller,
                adjoint=adjoint, max_steps=max_steps,
            )
            zT = sol.ys[-1]
            stats = (sol.stats["num_accepted_steps"], sol.stats["num_rejected_steps"])
            return jnp.mean(zT ** 2), stats

        return loss

    def run(self):
        """One forward and backward solve; blocks until the result is ready, so it can be timed.

        **Returns:** ``(loss, grads)``: the loss as a float and its gradients as numpy float32
        arrays, in the order and shapes of ``torch_mlp.parameters()``.
        """
        (loss, stats), grads = self._grad_fn(self._params, self._y0)
        loss, stats, grads = jax.block_until_ready((loss, stats, grads))
        self.forward_steps = (int(stats[0]), int(stats[1]))
        return float(loss), [np.asarray(g) for g in grads]

    def nfe(self):
        """Evaluations of the vector field in the forward and the backward solve, counted.

        diffrax does not report them, so a second copy of the problem, whose vector field
        increments a counter through ``jax.debug.callback``, is compiled (seconds, once) and run
        once; the timed ``run()`` stays uninstrumented. A backward evaluation is one of ``f`` and
        its vector–Jacobian product.

        **Returns:** ``(forward, backward)`` as ints, cached after the first call.
        """
        if self._nfe is None:
            loss = self._loss_fn(counted=True)
            calls = self._calls
            forward_fn = jax.jit(lambda p, y: loss(p, y)[0])
            grad_fn = jax.jit(jax.grad(lambda p, y: loss(p, y)[0]))
            counts = []
            for fn in (forward_fn, grad_fn):
                jax.block_until_ready(fn(self._params, self._y0))  # compiles
                jax.effects_barrier()
                calls.clear()
                jax.block_until_ready(fn(self._params, self._y0))
                jax.effects_barrier()
                counts.append(len(calls))
            self._nfe = (counts[0], counts[1] - counts[0])
        return self._nfe


def make_case(torch_mlp, y0, method, T, rtol=1e-6, atol=1e-6, step_size=None,
              adjoint="backsolve") -> DiffraxCase:
    """Build and compile the diffrax counterpart of one benchmark configuration.

    **Arguments:**

    - `torch_mlp`: a ``helpers.models.MLP`` (tanh MLP, ``nn.Linear`` layers in ``net``); its
      weights are copied, as float32, so later changes to it are not seen.
    - `y0`: the initial state, a 2-D torch tensor ``(batch, state)``; copied as float32.
    - `method`: ``"dopri5"`` (adaptive: diffrax's I controller at ``rtol``/``atol`` from the
      Hairer starting step that helpers and torchdiffeq use; backward with the seminorm that
      leaves the parameter-gradient channel out, as helpers' default) or ``"rk4"`` (classical
      RK4, fixed steps).
    - `T`: the final time; the solve runs over ``[0, T]``.
    - `rtol`, `atol`: tolerances of dopri5's forward and backward solves (unused by rk4).
    - `step_size`: rk4's step; the solve takes ``ceil(T / step_size)`` equal steps, as helpers
      does. Must be ``None`` for dopri5.
    - `adjoint`: ``"backsolve"`` (``diffrax.BacksolveAdjoint``, the continuous adjoint, beside
      ``helpers.odeint_adjoint``) or ``"recursive_checkpoint"`` (diffrax's default
      ``RecursiveCheckpointAdjoint``, beside backpropagation through ``helpers.odeint``).

    **Returns:** a :class:`DiffraxCase`, already compiled (its ``compile_seconds`` is set).
    """
    import torch

    if not available():
        raise ImportError("make_case needs jax and diffrax: pip install -r benchmarks/requirements-diffrax.txt")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if adjoint not in ADJOINTS:
        raise ValueError(f"adjoint must be one of {ADJOINTS}, got {adjoint!r}")
    params = _mlp_weights(torch_mlp)
    if not isinstance(y0, torch.Tensor):
        raise TypeError(f"y0 must be a torch.Tensor, got {type(y0).__name__}")
    if y0.dim() != 2 or not y0.dtype.is_floating_point:
        raise ValueError(f"y0 must be a 2-D floating-point tensor (batch, state), got shape {tuple(y0.shape)} "
                         f"and dtype {y0.dtype}")
    if y0.shape[1] != params[0].shape[1] or params[-1].shape[0] != params[0].shape[1]:
        raise ValueError(f"y0 has {y0.shape[1]} state components but torch_mlp maps {params[0].shape[1]} "
                         f"inputs to {params[-1].shape[0]} outputs")
    if not bool(torch.isfinite(y0).all()):
        raise ValueError("y0 contains inf or nan")
    for name, value in (("T", T), ("rtol", rtol), ("atol", atol)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be finite and positive, got {value!r}")
    num_fixed_steps = None
    if method == "rk4":
        if step_size is None or isinstance(step_size, bool) or not isinstance(step_size, (int, float)):
            raise TypeError(f"rk4 needs step_size, a positive real number; got {step_size!r}")
        if not (math.isfinite(step_size) and step_size > 0):
            raise ValueError(f"step_size must be finite and positive, got {step_size!r}")
        # helpers' rule (helpers/solve.py): the fewest equal steps no longer than step_size.
        num_fixed_steps = max(1, math.ceil(T / step_size - 1e-9))
    elif step_size is not None:
        raise ValueError(f"step_size is for rk4; dopri5 chooses its own steps, got step_size={step_size!r}")
    y0_np = np.asarray(y0.detach().cpu().numpy(), dtype=np.float32)
    return DiffraxCase(params, y0_np, method, float(T), float(rtol), float(atol),
                       None if step_size is None else float(step_size), num_fixed_steps, adjoint)


# --- self-check -----------------------------------------------------------------------------

def _rel_diff(a, b):
    """As benchmarks/speed.py's rel_diff: ``||a - b|| / ||b||`` over all parameters, in float64."""
    num = math.sqrt(sum(float(((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2).sum())
                        for x, y in zip(a, b)))
    den = math.sqrt(sum(float((np.asarray(y, np.float64) ** 2).sum()) for y in b))
    return num / den


def _thread_seconds():
    """Seconds that all of this process's threads spent running or waiting to run (Linux), else None.

    Divided by the wall time of a stretch of work, it says how many threads wanted a CPU on
    average: 1.0 for one thread, whatever other processes are doing to the machine.
    """
    try:
        total = 0
        for task in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{task}/schedstat") as fh:
                    run_ns, wait_ns, _ = fh.read().split()
            except OSError:  # the thread has exited
                continue
            total += int(run_ns) + int(wait_ns)
        return total / 1e9
    except (OSError, ValueError):
        return None


def _check_rk4_step(params, y0, h):
    """One step of the custom diffrax RK4 against a hand-written RK4 step in numpy (float64).

    **Returns:** ``(error, gap)``: the largest difference between diffrax's step and the numpy
    one, and between the numpy one and Kutta's 3/8 rule (the other classical fourth-order
    method, torchdiffeq's ``rk4``), both relative to the largest increment. The check can tell
    the two methods apart only when ``error`` is well below ``gap``.
    """
    p64 = [np.asarray(p, np.float64) for p in params]

    def f(y):
        n = len(p64) // 2
        for i in range(n):
            y = y @ p64[2 * i].T + p64[2 * i + 1]
            if i < n - 1:
                y = np.tanh(y)
        return y

    y = np.asarray(y0, np.float64)
    k1 = f(y)
    k2 = f(y + h / 2 * k1)
    k3 = f(y + h / 2 * k2)
    k4 = f(y + h * k3)
    expected = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, y, args: _mlp(args, y)), _rk4_solver(), t0=0.0, t1=h, dt0=h,
        y0=jnp.asarray(y0), args=[jnp.asarray(p) for p in params], saveat=diffrax.SaveAt(t1=True),
        stepsize_controller=diffrax.ConstantStepSize(),
    )
    got = np.asarray(sol.ys[-1], np.float64)
    a1 = k1
    a2 = f(y + h / 3 * a1)
    a3 = f(y + h * (a2 - a1 / 3))
    a4 = f(y + h * (a1 - a2 + a3))
    three_eighths = y + h / 8 * (a1 + 3 * a2 + 3 * a3 + a4)
    increment = np.abs(expected - y).max()
    return (float(np.abs(got - expected).max() / increment),
            float(np.abs(three_eighths - expected).max() / increment))


def _self_check(repeats=20):
    import torch

    import helpers
    from helpers.models import MLP

    if not available():
        sys.exit("jax and diffrax are not installed: pip install -r benchmarks/requirements-diffrax.txt")
    torch.set_num_threads(1)
    torch.manual_seed(0)  # problem S, exactly as benchmarks/speed.py builds it
    func = MLP((2, 64, 2))
    y0 = torch.randn(256, 2)
    params = _mlp_weights(func)

    # A long step, so that the RK4 truncation terms, which tell the tableau apart, outweigh the
    # float32 rounding of diffrax's step.
    step_err, gap = _check_rk4_step(params, y0.numpy(), 2.0)
    print(f"custom RK4 tableau, one step h=2: max |diffrax - numpy classical RK4| / max |increment| = "
          f"{step_err:.1e} (numpy 3/8 rule vs classical: {gap:.1e})")

    failures = []
    if not step_err < min(1e-5, gap / 10):
        failures.append("rk4 step")
    configs = [("dopri5", 10.0, None, "backsolve"), ("rk4", 1.0, 0.01, "backsolve"),
               ("dopri5", 10.0, None, "recursive_checkpoint"), ("rk4", 1.0, 0.01, "recursive_checkpoint")]
    print(f"jax {jax.__version__}, diffrax {diffrax.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS')!r}")
    for method, T, step_size, adjoint in configs:
        case = make_case(func, y0, method, T, rtol=1e-6, atol=1e-6, step_size=step_size, adjoint=adjoint)
        # the helpers counterpart: the continuous adjoint, or backpropagation through the steps
        solve = helpers.odeint_adjoint if adjoint == "backsolve" else helpers.odeint
        loss, grads = case.run()
        times = []
        busy0 = _thread_seconds()
        for _ in range(repeats):
            t0 = time.perf_counter()
            case.run()
            times.append(time.perf_counter() - t0)
        busy1 = _thread_seconds()
        busy = "n/a" if busy0 is None else f"{(busy1 - busy0) / sum(times):.2f}"

        options = None if step_size is None else dict(step_size=step_size)
        stats = helpers.SolveStats()

        def helpers_run():
            func.zero_grad(set_to_none=True)
            ys = solve(func, y0, torch.tensor([0.0, T]), rtol=1e-6, atol=1e-6, method=method,
                       options=options)
            out = (ys[-1] ** 2).mean()
            out.backward()
            return float(out.detach()), [p.grad.detach().numpy().copy() for p in func.parameters()]

        ref_loss, ref_grads = helpers_run()
        ys = solve(func, y0, torch.tensor([0.0, T]), rtol=1e-6, atol=1e-6, method=method,
                   options=options, stats=stats)
        (ys[-1] ** 2).mean().backward()
        helpers_times = []
        for _ in range(5):
            t0 = time.perf_counter()
            helpers_run()
            helpers_times.append(time.perf_counter() - t0)
        nfe = case.nfe()
        diff = _rel_diff(grads, ref_grads)
        label = f"{method} T={T:g}" + ("" if step_size is None else f" h={step_size:g}") + f", {adjoint}"
        print(f"\n{label}: compile {case.compile_seconds:.2f} s; run median {1e3 * statistics.median(times):.2f} ms "
              f"over {repeats} (threads wanting a CPU, mean: {busy}); "
              f"helpers eager median {1e3 * statistics.median(helpers_times):.2f} ms over 5")
        print(f"  NFE fwd/bwd diffrax {nfe[0]}/{nfe[1]} (forward steps accepted/rejected {case.forward_steps}), "
              f"helpers {stats.nfe_forward}/{stats.nfe_backward}")
        print(f"  loss diffrax {loss:.8g} helpers {ref_loss:.8g}; gradient rel. diff vs helpers {diff:.2e}")
        if not diff < 1e-5:
            failures.append(label)
    if failures:
        sys.exit(f"FAILED: {', '.join(failures)}")
    print("\nOK: gradients agree with helpers to 1e-5 relative")


if __name__ == "__main__":
    _self_check()
