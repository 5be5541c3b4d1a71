"""snnTorch users' own models, written the way snnTorch's tutorials write them (not edgeprune
code): nn.Sequential of layers and Leaky/Synaptic neurons. Used by tests/test_snntorch_import.py."""
import snntorch as snn
import torch
from torch import nn

BETA = 0.9


def convnet():
    """Conv2d, Leaky, Linear: snnTorch's tutorial network on 8x8 digits (init_hidden: the
    neurons keep their own state; the last returns spikes and membrane)."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        snn.Leaky(beta=BETA, init_hidden=True),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 10),
        snn.Leaky(beta=BETA, init_hidden=True, output=True),
    )


def convnet_two_layers():
    """The tutorial network one conv layer deeper and wider (~6k weights instead of ~1.4k):
    the size at which a 90% ticket keeps enough weights to stay near the dense accuracy."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        snn.Leaky(beta=BETA, init_hidden=True),
        nn.AvgPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        snn.Leaky(beta=BETA, init_hidden=True),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 2 * 2, 10),
        snn.Leaky(beta=BETA, init_hidden=True, output=True),
    )


def train_the_snntorch_way(net, ds, timesteps, epochs=2, seed=0):
    """snnTorch's own tutorial loop: utils.reset, T forward calls, rate-coded cross-entropy."""
    from snntorch import functional as SF, utils

    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), 5e-3)
    loss_fn = SF.ce_rate_loss()
    for _epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(ds.y_train))
        for i in range(0, len(perm), 64):
            x, y = ds.x_train[perm[i:i + 64]].float(), ds.y_train[perm[i:i + 64]]
            utils.reset(net)
            spk = torch.stack([net(x)[0] for _ in range(timesteps)])
            loss = loss_fn(spk, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def snntorch_accuracy(net, ds, timesteps) -> float:
    """snnTorch's own evaluation: spike counts of the output layer, SF.accuracy_rate."""
    from snntorch import functional as SF, utils

    with torch.no_grad():
        utils.reset(net)
        x = ds.x_test.float()
        spk = torch.stack([net(x)[0] for _ in range(timesteps)])
        return float(SF.accuracy_rate(spk, ds.y_test))


def explicit_state():
    """Leaky and Synaptic without init_hidden (the caller passes the state), zero reset, a
    learnable beta and threshold, and an immediate reset."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 32),
        snn.Synaptic(alpha=0.8, beta=0.7, reset_mechanism="zero"),
        nn.Linear(32, 10),
        snn.Leaky(beta=torch.tensor(0.6), threshold=0.8, learn_beta=True, learn_threshold=True,
                  reset_delay=False),
    )


def per_neuron_beta():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10),
                         snn.Leaky(beta=torch.linspace(0.5, 0.9, 10), init_hidden=True))
