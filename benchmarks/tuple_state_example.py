"""A small continuous normalising flow on a tuple state, written against torchdiffeq's API.

    python benchmarks/tuple_state_example.py [--adjoint] [--niters N]

The state is the tuple ``(z, logp)``: ``z`` a batch of 2-D points, ``logp`` the change of their
log-density, ``d logp/dt = -trace(df/dz)`` (exact, from two vector-Jacobian products). The flow
maps samples of a 2-D data distribution (two Gaussian blobs) back to a standard normal; the loss
is the negative log-likelihood of a fixed, seeded batch. It imports ``torchdiffeq``, so run with
``benchmarks/torchdiffeq_examples.py`` it answers for helpers (import swapped) and for torchdiffeq.
Prints ``Iter N | Loss x`` lines, the last one the final loss.
"""
import argparse
import math

import torch
from torch import nn

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--adjoint", action="store_true")
parser.add_argument("--niters", type=int, default=30)
parser.add_argument("--test_freq", type=int, default=10)
args = parser.parse_args()

if args.adjoint:
    from torchdiffeq import odeint_adjoint as odeint
else:
    from torchdiffeq import odeint

torch.manual_seed(0)


class Flow(nn.Module):
    """dz/dt = net(t, z) and dlogp/dt = -trace(dnet/dz), on the tuple (z, logp)."""

    def __init__(self, width=32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, width), nn.Tanh(), nn.Linear(width, 2))

    def forward(self, t, state):
        z, _ = state
        with torch.enable_grad():
            z = z if z.requires_grad else z.detach().requires_grad_(True)
            dz = self.net(torch.cat([z, t.expand(len(z), 1)], dim=1))
            trace = sum(torch.autograd.grad(dz[:, i].sum(), z, create_graph=True)[0][:, i] for i in range(2))
        return dz, -trace.reshape(-1, 1)


def data(n):
    centres = torch.tensor([[2.0, 0.0], [-2.0, 0.0]])
    return centres[torch.randint(0, 2, (n,))] + 0.4 * torch.randn(n, 2)


flow = Flow()
optimiser = torch.optim.Adam(flow.parameters(), lr=1e-2)
t = torch.tensor([0.0, 1.0])
x = data(128)
kwargs = dict(rtol=1e-4, atol=1e-4, method="dopri5")
if args.adjoint:
    kwargs["adjoint_params"] = tuple(flow.parameters())


def nll():
    z, delta = odeint(flow, (x, torch.zeros(len(x), 1)), t, **kwargs)
    z1, delta1 = z[-1], delta[-1]
    log_normal = -0.5 * (z1 ** 2).sum(dim=1) - math.log(2 * math.pi)
    return -(log_normal - delta1.reshape(-1)).mean()


for itr in range(1, args.niters + 1):
    optimiser.zero_grad()
    loss = nll()
    loss.backward()
    optimiser.step()
    if itr % args.test_freq == 0:
        print(f"Iter {itr:04d} | Loss {loss.item():.6f}")
