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
