"""SpikingJelly, Sinabs and Rockpool users' own models, written the way each framework's
tutorials write them (not edgeprune code), trained with each framework's own loop, and written
to NIR with each framework's own exporter. Used by tests/test_other_frameworks.py."""
import torch
from torch import nn


def _batches(ds, seed, batch=64):
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(ds.x_train), generator=g)
    for i in range(0, len(order), batch):
        idx = order[i:i + batch]
        yield ds.x_train[idx].float(), ds.y_train[idx]


# -- Sinabs: IAFSqueeze / LIFSqueeze, SumPool2d; input (batch·time, C, H, W) ------------------

def sinabs_net(kind: str, timesteps: int):
    import sinabs.layers as sl

    def neuron():
        if kind == "iaf":
            return sl.IAFSqueeze(num_timesteps=timesteps)  # Sinabs' defaults: multi-spike, subtract
        # and norm_input=True (the input scaled by 1 − alpha); a lower threshold so it fires
        return sl.LIFSqueeze(tau_mem=2.0, spike_threshold=0.25, num_timesteps=timesteps)

    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), neuron(), sl.SumPool2d(2), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 10), neuron())


def sinabs_variants():
    """LIFSqueeze with SingleSpike, MembraneReset(0.1), min_v_mem, no norm_input, a fixed
    batch_size; IAFSqueeze with its threshold and a floor; weights scaled so that both fire."""
    import sinabs.layers as sl
    from sinabs.activation import MembraneReset, SingleSpike

    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        sl.LIFSqueeze(tau_mem=3.0, spike_fn=SingleSpike, reset_fn=MembraneReset(reset_value=0.1),
                      min_v_mem=-0.5, norm_input=False, batch_size=50),
        sl.SumPool2d(2), nn.Flatten(), nn.Linear(128, 10),
        sl.IAFSqueeze(batch_size=50, spike_threshold=0.5, min_v_mem=-1.0))
    with torch.no_grad():
        net[0].weight.mul_(4)
        net[4].weight.mul_(3)
        net[4].bias.fill_(0.2)
    return net


def sinabs_plain():
    """IAF / LIF (not Squeeze: they take (batch, time, ...)), a trained-alpha LIF, SingleSpike."""
    import sinabs.layers as sl
    from sinabs.activation import SingleSpike

    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), sl.LIF(tau_mem=5.0, train_alphas=True),
                        nn.Linear(32, 10), sl.IAF(spike_fn=SingleSpike))
    with torch.no_grad():
        net[1].weight.mul_(5)
        net[3].weight.mul_(5)
    return net


def sinabs_synaptic():
    import sinabs.layers as sl

    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10), sl.LIF(tau_mem=5.0, tau_syn=3.0))


def sinabs_recurrent():
    import sinabs.layers as sl

    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10),
                         sl.IAFRecurrent(rec_connect=nn.Linear(10, 10)))


def sinabs_forward(net, x, timesteps):
    """(B, ...) images, the same at every step -> (T, B, K) output spikes."""
    import sinabs

    sinabs.reset_states(net)
    seq = x[:, None].expand(len(x), timesteps, *x.shape[1:]).reshape(-1, *x.shape[1:])
    return net(seq).reshape(len(x), timesteps, -1).transpose(0, 1)


def train_the_sinabs_way(net, ds, timesteps, epochs=2, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for epoch in range(epochs):
        for x, y in _batches(ds, seed + epoch):
            out = sinabs_forward(net, x, timesteps).sum(0)
            loss = nn.functional.cross_entropy(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def sinabs_to_nir(net, path, timesteps):
    import nir
    import sinabs

    import numpy as np

    graph = sinabs.to_nir(net, torch.rand(timesteps, 1, 8, 8))
    # Sinabs 3.1.3 writes a LIF's parameters as scalars, which NIR's type inference (needed
    # before nir.write) rejects: spread them over the layer's neurons, as a user has to
    for name, node in graph.nodes.items():
        if isinstance(node, nir.LIF) and np.ndim(node.tau) == 0:
            shape = tuple(net[int(name)].v_mem.shape[1:])
            for key in ("tau", "r", "v_leak", "v_threshold", "v_reset"):
                setattr(node, key, np.full(shape, float(np.asarray(getattr(node, key)))))
            node.input_type = {"input": np.array(shape)}
            node.output_type = {"output": np.array(shape)}
    graph.infer_types()  # nir.write needs the shapes sinabs leaves out
    nir.write(str(path), graph)


# -- SpikingJelly: layer.* wrappers, IFNode / LIFNode, single-step mode -------------------------

def spikingjelly_net():
    from spikingjelly.activation_based import layer, neuron

    return nn.Sequential(layer.Conv2d(1, 8, 3, padding=1), neuron.IFNode(), layer.AvgPool2d(2),
                         layer.Flatten(), layer.Linear(8 * 4 * 4, 10),
                         neuron.LIFNode(tau=2.0))


def spikingjelly_tutorial():
    """SpikingJelly's tutorial conv net: layer.* wrappers with BatchNorm, LIFNode (one without
    decay_input, one with a soft reset), multi-step mode: input (T, B, C, H, W)."""
    from spikingjelly.activation_based import functional, layer, neuron

    net = nn.Sequential(
        layer.Conv2d(1, 8, 3, padding=1, bias=False), layer.BatchNorm2d(8),
        neuron.LIFNode(tau=2.0, decay_input=False), layer.AvgPool2d(2), layer.Flatten(),
        layer.Linear(8 * 4 * 4, 10), neuron.LIFNode(tau=2.0, v_reset=None))
    functional.set_step_mode(net, "m")
    return net


class CSNN(nn.Module):
    """SpikingJelly's tutorial wrapper: one nn.Sequential of layer.* and neuron.* modules."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        from spikingjelly.activation_based import layer, neuron

        self.scale = scale
        self.conv_fc = nn.Sequential(
            layer.Conv2d(1, 8, 3, padding=1), neuron.IFNode(), layer.AvgPool2d(2),
            layer.Flatten(), layer.Linear(8 * 4 * 4, 10), neuron.LIFNode(tau=2.0))
        with torch.no_grad():
            self.conv_fc[0].weight.mul_(3)
            self.conv_fc[4].weight.mul_(4)

    def forward(self, x):
        return self.conv_fc(x * self.scale) if self.scale != 1.0 else self.conv_fc(x)


def spikingjelly_wrapped():
    torch.manual_seed(0)
    return CSNN()


def spikingjelly_wrapped_more():
    """A forward that scales its input first: not what its child computes."""
    torch.manual_seed(0)
    return CSNN(scale=2.0)


class TwoChildren(CSNN):
    def __init__(self):
        super().__init__()
        self.readout = nn.Linear(10, 10)

    def forward(self, x):
        return self.readout(self.conv_fc(x))


def spikingjelly_two_children():
    return TwoChildren()


def train_the_spikingjelly_multistep_way(net, ds, timesteps, epochs=2, seed=0):
    from spikingjelly.activation_based import functional

    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for epoch in range(epochs):
        for x, y in _batches(ds, seed + epoch):
            functional.reset_net(net)
            rate = net(x[None].expand(timesteps, *x.shape)).mean(0)
            loss = nn.functional.mse_loss(rate, nn.functional.one_hot(y, 10).float())
            opt.zero_grad()
            loss.backward()
            opt.step()
    functional.reset_net(net)
    return net.eval()


def spikingjelly_forward(net, x, timesteps):
    from spikingjelly.activation_based import functional

    functional.reset_net(net)
    out = torch.stack([net(x) for _ in range(timesteps)])
    functional.reset_net(net)
    return out


def train_the_spikingjelly_way(net, ds, timesteps, epochs=2, seed=0):
    """SpikingJelly's tutorial loop: T single-step calls, the rate as output, reset_net."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for epoch in range(epochs):
        for x, y in _batches(ds, seed + epoch):
            rate = spikingjelly_forward(net, x, timesteps).mean(0)
            loss = nn.functional.mse_loss(rate, nn.functional.one_hot(y, 10).float())
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def spikingjelly_to_nir(net, path):
    from spikingjelly.activation_based import nir_exchange

    nir_exchange.export_to_nir(net, torch.rand(1, 1, 8, 8), save_path=str(path), dt=1e-4)


# -- Rockpool: LinearTorch, LIFTorch in a TorchSequential -------------------------------------

def rockpool_net(with_neurons: bool = True):
    from rockpool.nn.combinators import Sequential
    from rockpool.nn.modules import LIFTorch, LinearTorch

    if not with_neurons:
        return Sequential(LinearTorch((64, 10), has_bias=True))
    return Sequential(LinearTorch((64, 32)), LIFTorch(32), LinearTorch((32, 10)), LIFTorch(10))


def rockpool_constant_net():
    """LinearTorch -> LIFTorch -> LinearTorch readout, the LIF's time constants, bias and
    threshold kept Constant (one value per layer, as edgeprune imports them); only the weights
    train. Up to 2^16 spikes a step (max_spikes_per_dt, its default: to_nir does not write it)."""
    from rockpool.nn.combinators import Sequential
    from rockpool.nn.modules import LIFTorch, LinearTorch
    from rockpool.parameters import Constant

    torch.manual_seed(0)
    return Sequential(LinearTorch((64, 32), has_bias=True),
                      LIFTorch(32, tau_mem=Constant(0.02), tau_syn=Constant(0.005),
                               bias=Constant(0.0), threshold=Constant(1.0)),
                      LinearTorch((32, 10), has_bias=True))


def rockpool_clamped():
    """LIFTorch with at most 2 spikes a step and a bias, weights scaled so that it fires."""
    from rockpool.nn.combinators import Sequential
    from rockpool.nn.modules import LIFTorch, LinearTorch
    from rockpool.parameters import Constant

    torch.manual_seed(0)
    net = Sequential(LinearTorch((64, 32)),
                     LIFTorch(32, tau_mem=Constant(0.02), tau_syn=Constant(0.01),
                              bias=Constant(0.05), threshold=Constant(0.5), max_spikes_per_dt=2.0),
                     LinearTorch((32, 10), has_bias=True))
    with torch.no_grad():
        net[0].weight.mul_(3)
    return net


def rockpool_per_neuron():
    """LIFTorch as its default trains it: one time constant per neuron."""
    from rockpool.nn.combinators import Sequential
    from rockpool.nn.modules import LIFTorch, LinearTorch

    net = Sequential(LinearTorch((64, 10)), LIFTorch(10))
    with torch.no_grad():
        net[1].tau_mem.copy_(torch.linspace(0.01, 0.03, 10))
    return net


def rockpool_exp_syn():
    from rockpool.nn.combinators import Sequential
    from rockpool.nn.modules import ExpSynTorch, LIFTorch, LinearTorch

    return Sequential(LinearTorch((64, 10)), ExpSynTorch(10), LIFTorch(10))


def rockpool_forward(net, x, timesteps):
    """(B, 1, 8, 8) images, the same at every step -> (T, B, K) output spike counts."""
    net.reset_state()
    seq = x.flatten(1)[:, None].expand(len(x), timesteps, 64)
    out, _, _ = net(seq)
    net.reset_state()
    return out.transpose(0, 1)


def train_the_rockpool_way(net, ds, timesteps, epochs=3, seed=0):
    """Rockpool's torch training loop: Adam on net.parameters().astorch()."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters().astorch(), lr=1e-2)
    for epoch in range(epochs):
        for x, y in _batches(ds, seed + epoch):
            loss = nn.functional.cross_entropy(rockpool_forward(net, x, timesteps).sum(0), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net


def rockpool_to_nir(net, path, timesteps):
    import nir
    from rockpool.nn.modules.torch.nir import to_nir

    nir.write(str(path), to_nir(net, torch.rand(1, timesteps, 64)))


def sinabs_iaf():
    """The IAFSqueeze net as a --model-def function (T = 4)."""
    return sinabs_net("iaf", 4)


def sinabs_lif():
    return sinabs_net("lif", 4)
