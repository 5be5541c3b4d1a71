"""A NIR file written the way snnTorch 1.0.0's mapping (snntorch/export_nir.py) writes one:
Leaky -> LIF with dt = 1e-4, tau = dt/(1 - beta), r = tau/dt, v_leak 0, v_reset 0 (computed in
float32, as snnTorch does); Synaptic -> CubaLIF with tau_syn = dt/(1 - alpha), w_in = tau_syn/dt;
Conv2d (zero bias when it has none), Linear -> Affine/Linear, AvgPool2d -> AvgPool2d.
snnTorch's own export_to_nir fails on such networks (NOTES.md): its scalar parameters and None
shapes cannot be written. As NOTES.md found, broadcasting the parameters per neuron and filling
the shapes makes a graph that `nir.write` stores; that is all this adds. No metadata names
snnTorch or dt: like snnTorch's files, the reader has to be told."""
import nir
import numpy as np
import snntorch as snn
import torch
from torch import nn

DT = 1e-4


def _np(t):
    return t.detach().cpu().numpy()


def to_nir(net: nn.Sequential, input_shape) -> nir.NIRGraph:
    nodes = {"input": nir.Input(input_type={"input": np.array(input_shape)})}
    edges, prev, x = [], "input", torch.zeros((1, *input_shape))
    for i, m in enumerate(net):
        name, shape = str(i), tuple(x.shape[1:])
        if isinstance(m, nn.Conv2d):
            node = nir.Conv2d(input_shape=shape[1:], weight=_np(m.weight), stride=m.stride,
                              padding=m.padding, dilation=m.dilation, groups=m.groups,
                              bias=_np(m.bias) if m.bias is not None
                              else np.zeros(m.out_channels, np.float32))
        elif isinstance(m, nn.Linear):
            node = nir.Affine(weight=_np(m.weight), bias=_np(m.bias)) if m.bias is not None \
                else nir.Linear(weight=_np(m.weight))
        elif isinstance(m, nn.AvgPool2d):
            k = np.array(m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size,) * 2)
            node = nir.AvgPool2d(kernel_size=k, stride=k, padding=np.array([0, 0]))
        elif isinstance(m, nn.Flatten):
            node = nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0)
        elif isinstance(m, snn.Synaptic):
            beta = np.full(shape, _np(m.beta), np.float32)
            alpha = np.full(shape, _np(m.alpha), np.float32)
            tau_syn, tau_mem = DT / (1 - alpha), DT / (1 - beta)
            node = nir.CubaLIF(tau_syn=tau_syn, tau_mem=tau_mem, r=tau_mem / DT,
                               v_leak=np.zeros(shape, np.float32),
                               v_threshold=np.full(shape, _np(m.threshold), np.float32),
                               v_reset=np.zeros(shape, np.float32), w_in=tau_syn / DT)
        elif isinstance(m, snn.Leaky):
            beta = np.full(shape, _np(m.beta), np.float32)
            tau = DT / (1 - beta)
            node = nir.LIF(tau=tau, r=tau / DT, v_leak=np.zeros(shape, np.float32),
                           v_threshold=np.full(shape, _np(m.threshold), np.float32),
                           v_reset=np.zeros(shape, np.float32))
        else:
            raise TypeError(type(m))
        nodes[name] = node
        edges.append((prev, name))
        prev = name
        if not isinstance(m, snn.SpikingNeuron):
            with torch.no_grad():
                x = m(x)
    nodes["output"] = nir.Output(output_type={"output": np.array(x.shape[1:])})
    edges.append((prev, "output"))
    return nir.NIRGraph(nodes=nodes, edges=edges)


def write(net: nn.Sequential, input_shape, path) -> None:
    nir.write(str(path), to_nir(net, input_shape))
