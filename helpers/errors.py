"""The one exception type the solvers raise when a solve cannot finish.

Bad arguments raise ``ValueError`` or ``TypeError`` before any work starts. A solve that starts
but cannot finish (the state turned non-finite, the step size underflowed, ``max_num_steps`` ran
out) raises :class:`SolveError`, a ``ValueError`` that says where it stopped and why.

Introduced in the chapter "Neural ODEs and the forward pass"; chapter "What is the adjoint?" meets
it when a solution blows up.
"""


class SolveError(ValueError):
    """A solve that started but could not reach the final time.

    Introduced in the chapter "What is the adjoint?".
    """
