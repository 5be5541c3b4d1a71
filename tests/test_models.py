import pytest
import torch

from edgeprune.models import ModelSpec, prunable
from edgeprune.config import NeuronParams, TrainConfig
from edgeprune.neurons import LIF
from edgeprune.training import Trainer
from edgeprune.data import Dataset


def spec(arch, shape, **kw):
    return ModelSpec(arch=arch, input_shape=shape, mean=(0.5,) * shape[0], std=(0.25,) * shape[0],
                     **kw)


@pytest.mark.parametrize("arch,expected", [("vgg16", 14_715_584), ("resnet19", 12_619_968)])
def test_paper_weight_counts(arch, expected):
    """Conv + linear weights at width 1 on 32x32x3 / 10 classes: the paper's 14.72M / 12.62M."""
    n = sum(p.numel() for p in prunable(spec(arch, (3, 32, 32)).build()).values())
    assert n == expected
    assert abs(n / 1e6 - {"vgg16": 14.72, "resnet19": 12.62}[arch]) < 0.01


def test_lif_step_is_the_papers_neuron():
    v = torch.tensor([0.0, 0.8, 0.0])
    x = torch.tensor([1.0, 1.0, 2.0])
    z, v_new = LIF(NeuronParams()).step(x, v)
    # v = 0.25 v + 0.75 x  ->  [0.75, 0.95, 1.5]; spike where > 1, hard reset to 0
    assert z.tolist() == [0.0, 0.0, 1.0]
    assert torch.allclose(v_new, torch.tensor([0.75, 0.95, 0.0]))


def test_lif_subtract_reset():
    z, v = LIF(NeuronParams(reset="subtract")).step(torch.tensor([2.0]), torch.tensor([0.0]))
    assert z.item() == 1.0 and abs(v.item() - 0.5) < 1e-6


def test_surrogate_gives_gradient():
    lif = LIF(NeuronParams())
    x = torch.full((3, 4), 0.9, requires_grad=True)
    lif(x.unsqueeze(1).expand(3, 2, 4)).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


@pytest.mark.parametrize("arch,shape", [("convnet", (1, 8, 8)), ("convnet", (1, 28, 28)),
                                        ("vgg16", (3, 32, 32)), ("resnet19", (3, 32, 32)),
                                        ("vgg16", (1, 28, 28)), ("resnet19", (2, 9, 13))])
@pytest.mark.parametrize("encoding", ["direct", "poisson"])
def test_sequence_equals_step_loop_at_any_T(arch, shape, encoding):
    """forward over T equals T explicit steps with state passed in and out (eval mode)."""
    m = spec(arch, shape, width=0.125, encoding=encoding).build().eval()
    x = torch.rand(2, *shape)
    for T in (1, 3):
        if encoding == "poisson":
            torch.manual_seed(0)
            seq_out = m(x, T)
            torch.manual_seed(0)
            spikes = (torch.rand((T, *x.shape)) < x).float()
            state = m.initial_state(spikes[0])
            steps = []
            for t in range(T):
                o, state = m.step(spikes[t], state)
                steps.append(o)
        else:
            seq_out = m(x, T)
            state, steps = m.initial_state(x), []
            for _ in range(T):
                o, state = m.step(x, state)
                steps.append(o)
        assert seq_out.shape == (T, 2, 10)
        assert torch.allclose(seq_out, torch.stack(steps), atol=1e-5)


@pytest.mark.parametrize("arch", ["vgg16", "resnet19"])
def test_deep_archs_train_a_few_steps_at_width_one_eighth(arch):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    ds = Dataset("synthetic", torch.rand(16, 3, 32, 32, generator=g),
                 torch.randint(0, 10, (16,), generator=g), torch.rand(4, 3, 32, 32, generator=g),
                 torch.randint(0, 10, (4,), generator=g), [str(i) for i in range(10)])
    m = spec(arch, (3, 32, 32), width=0.125, timesteps=2).build()
    before = {n: p.detach().clone() for n, p in prunable(m).items()}
    tr = Trainer(m, ds, 2, TrainConfig(epochs=1, batch_size=8), seed=0)
    row = tr.train_epoch()
    assert row["loss"] == row["loss"] and row["loss"] > 0  # finite
    changed = sum(not torch.equal(before[n], p) for n, p in prunable(m).items())
    assert changed == len(before)  # every prunable layer received gradient


def test_spec_round_trip():
    s = spec("resnet19", (3, 32, 32), width=0.25, timesteps=3)
    assert ModelSpec.from_dict(s.to_dict()) == s


def _digits(n: int):
    from edgeprune.data import load

    ds = load("digits")
    return ds.x_train[:n], ds.y_train[:n], ds


@pytest.mark.parametrize("arch", ["vgg16", "resnet19"])
def test_deep_models_spike_in_every_layer_at_initialization(arch):
    """On real images (digits), every LIF layer of a freshly built deep model fires: no dead
    layer for the gradient to die in (issue 23's first check)."""
    from edgeprune.models import spiking_layers

    x, _, ds = _digits(32)
    torch.manual_seed(0)
    m = spec(arch, ds.input_shape, width=0.125).build().train()
    rates = {}
    hooks = [mod.register_forward_hook(
        lambda _m, _i, out, n=n: rates.__setitem__(n, float(out.detach().mean())))
        for n, mod in spiking_layers(m).items()]
    with torch.no_grad():
        m(x, 3)
    for h in hooks:
        h.remove()
    assert len(rates) == {"vgg16": 13, "resnet19": 18}[arch]
    assert all(0.01 < r < 0.5 for r in rates.values()), rates


@pytest.mark.parametrize("arch", ["vgg16", "resnet19"])
@pytest.mark.parametrize("reset_grad", ["through", "detach"])
def test_deep_models_fit_a_small_batch_in_a_few_steps(arch, reset_grad):
    """Twelve SGD steps on 64 real digits images lower the training loss (by 10-16% at
    lr 0.2 on this machine; the bound leaves room for other BLAS builds)."""
    from edgeprune.training import loss_fn

    x, y, ds = _digits(64)
    torch.manual_seed(0)
    m = spec(arch, ds.input_shape, width=0.125, timesteps=2,
             neuron=NeuronParams(reset_grad=reset_grad)).build().train()
    opt = torch.optim.SGD(m.parameters(), lr=0.2, momentum=0.9)
    losses = []
    for _ in range(12):
        loss = loss_fn(m(x, 2), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.95 * losses[0], losses
