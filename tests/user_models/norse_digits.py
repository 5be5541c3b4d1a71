"""A Norse user's own model, written the way Norse's tutorials write one (not edgeprune code):
a SequentialState called once per timestep with its state. Used by tests/test_norse_import.py."""
import torch
from torch import nn
import norse.torch as norse
from norse.torch.functional.lif_box import LIFBoxParameters
from norse.torch.functional.leaky_integrator import LIParameters

DT = 1e-3
LIF = LIFBoxParameters(tau_mem_inv=torch.as_tensor(500.0))  # dt * tau_mem_inv = 0.5


def model():
    return norse.SequentialState(
        nn.Conv2d(1, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        norse.LIFBoxCell(LIF, dt=DT),
        nn.AvgPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        norse.LIFBoxCell(LIF, dt=DT),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
        norse.LICell(LIParameters(tau_syn_inv=torch.as_tensor(500.0),
                                  tau_mem_inv=torch.as_tensor(500.0)), dt=DT),
    )


def unsupported():
    return norse.SequentialState(nn.Conv2d(1, 4, 3), nn.ReLU(), norse.LIFBoxCell(LIF, dt=DT))


def plain_torch():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def not_a_module():
    return 42


def box_readout():
    """A readout without synaptic current (LIBoxCell): expressible in NIR."""
    from norse.torch.functional.leaky_integrator_box import LIBoxParameters

    return norse.SequentialState(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), norse.LIFBoxCell(LIF, dt=DT),
        nn.AvgPool2d(2), nn.Dropout(0.1), nn.Flatten(), nn.Linear(8 * 4 * 4, 10),
        norse.LIBoxCell(LIBoxParameters(tau_mem_inv=torch.as_tensor(250.0)), dt=DT))


def lif_with_leak():
    from norse.torch.functional.lif import LIFParameters

    return norse.SequentialState(nn.Flatten(), nn.Linear(64, 10),
                                 norse.LIFCell(LIFParameters(v_leak=torch.as_tensor(0.1))))


def lif_cell():
    """Norse's default neuron (LIFCell: a current-based LIF) in a conv net, with BatchNorm and
    an LICell readout, as Norse's tutorials build one."""
    from norse.torch.functional.lif import LIFParameters

    p = LIFParameters(tau_mem_inv=torch.as_tensor(400.0), tau_syn_inv=torch.as_tensor(600.0))
    return norse.SequentialState(
        nn.Conv2d(1, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        norse.LIFCell(p, dt=DT),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 64, bias=False),
        nn.BatchNorm1d(64),
        norse.LIFCell(p, dt=DT),
        nn.Linear(64, 10),
        norse.LICell(LIParameters(tau_syn_inv=torch.as_tensor(500.0),
                                  tau_mem_inv=torch.as_tensor(500.0)), dt=DT),
    )


def train_the_norse_way(model, ds, timesteps, epochs=3, images=None, seed=0):
    """The user's own training loop: Adam, the SequentialState stepped T times per batch, the
    loss on the mean output. `images`: a seeded subset per epoch (default: all)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(ds.y_train), generator=g)[:images]
        for i in range(0, len(perm), 64):
            x, y = ds.x_train[perm[i:i + 64]].float(), ds.y_train[perm[i:i + 64]]
            state, total = None, 0.0
            for _t in range(timesteps):
                out, state = model(x, state)
                total = total + out
            loss = nn.functional.cross_entropy(total / timesteps, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def norse_accuracy(model, ds, timesteps) -> float:
    """The user's own evaluation: the summed output of T steps, its argmax."""
    import torch

    with torch.no_grad():
        state, total = None, 0.0
        for _t in range(timesteps):
            out, state = model.eval()(ds.x_test.float(), state)
            total = total + out
        return float((total.argmax(1) == ds.y_test).float().mean())
