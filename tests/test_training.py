import pytest
import torch

from edgeprune import data
from edgeprune.models import ModelSpec
from edgeprune.config import TrainConfig
from edgeprune.training import Trainer, evaluate, loss_fn, predict


def _digits_run(seed, epochs=2):
    d = data.load("digits").subset(400, seed=0)
    mean, std = d.channel_stats()
    torch.manual_seed(seed)
    m = ModelSpec(input_shape=d.input_shape, mean=tuple(mean), std=tuple(std)).build()
    tr = Trainer(m, d, 3, TrainConfig(epochs=epochs, batch_size=32), seed=seed)
    for _ in range(epochs):
        tr.train_epoch()
    return m


def test_same_seed_same_weights_different_seed_different():
    a, b, c = _digits_run(1), _digits_run(1), _digits_run(2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_loss_is_mean_of_per_step_cross_entropy():
    logits = torch.randn(4, 3, 5)
    y = torch.tensor([0, 2, 4])
    per_step = torch.stack([torch.nn.functional.cross_entropy(logits[t], y) for t in range(4)])
    assert torch.allclose(loss_fn(logits, y), per_step.mean())
    assert torch.equal(predict(logits), logits.sum(0).argmax(-1))


def test_trained_digits_model_is_accurate_and_spikes(digits_model):
    """The shared fixture trains through the real train stage: 12 epochs on digits."""
    assert digits_model.metrics["test_accuracy"] >= 0.95
    rates = digits_model.metrics["spike_rate"]
    assert len(rates) == 3 and all(0.0 < r < 1.0 for r in rates.values())


def test_evaluate_reports_every_lif_layer():
    d = data.load("digits")
    m = ModelSpec(input_shape=d.input_shape).build()
    ev = evaluate(m, d.x_test[:50], d.y_test[:50], 2)
    assert set(ev["spike_rate"]) == {"body.0", "body.4", "body.9"}
    assert 0.0 <= ev["accuracy"] <= 1.0


# -- the fused recurrence and the execution options ------------------------------------------

@pytest.mark.parametrize("surrogate", ["super", "triangle", "tanh", "circ", "heavi_erfc"])
@pytest.mark.parametrize("reset", ["value", "subtract"])
@pytest.mark.parametrize("reset_grad", ["through", "detach"])
def test_fused_lif_equals_norse_step_loop(surrogate, reset, reset_grad):
    """Forward: the same spikes bit for bit; backward: the same gradients up to rounding."""
    from edgeprune.config import NeuronParams
    from edgeprune.neurons import LIF

    p = NeuronParams(surrogate=surrogate, reset=reset, alpha=2.0, reset_grad=reset_grad)
    torch.manual_seed(0)
    x = (torch.randn(6, 8, 50) * 1.5).requires_grad_()
    w = torch.randn(6, 8, 50)
    fused, loop = LIF(p), LIF(p)
    loop.fused = False
    z1 = fused(x)
    (z1 * w).sum().backward()
    g1, x.grad = x.grad.clone(), None
    z2 = loop(x)
    (z2 * w).sum().backward()
    assert torch.equal(z1, z2) and 0.1 < float(z1.detach().mean()) < 0.9
    assert torch.allclose(x.grad, g1, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reset", ["value", "subtract"])
def test_detached_reset_changes_only_the_gradient(reset):
    """reset_grad=detach: the same spikes, a different gradient (the reset's path is cut),
    and the model's description is unchanged at the default (ids stay)."""
    from edgeprune.config import NeuronParams
    from edgeprune.neurons import LIF

    torch.manual_seed(0)
    x = (torch.randn(6, 8, 50) * 1.5).requires_grad_()
    grads, spikes = [], []
    for rg in ("through", "detach"):
        z = LIF(NeuronParams(reset=reset, reset_grad=rg))(x)
        z.sum().backward()
        grads.append(x.grad.clone())
        spikes.append(z.detach())
        x.grad = None
    assert torch.equal(spikes[0], spikes[1])
    assert not torch.allclose(grads[0], grads[1])
    assert "reset_grad" not in NeuronParams().to_dict()
    assert NeuronParams(reset_grad="detach").to_dict()["reset_grad"] == "detach"


def test_bf16_autocast_keeps_spikes_exact_and_trains():
    from edgeprune.config import RunConfig
    from edgeprune.models import spiking_layers

    d = data.load("digits").subset(128, seed=0)
    m = ModelSpec(input_shape=d.input_shape).build()
    seen = []
    for lif in spiking_layers(m).values():
        lif.register_forward_hook(lambda mod, i, o: seen.append(o))
    tr = Trainer(m, d, 2, TrainConfig(epochs=1, batch_size=64), seed=0,
                 run=RunConfig(precision="bf16"))
    row = tr.train_epoch()
    assert row["loss"] == row["loss"] and row["loss"] < 10  # finite
    assert all(o.dtype == torch.float32 and set(o.unique().tolist()) <= {0.0, 1.0} for o in seen)
    assert tr.execution()["precision"] == "bf16" and tr.execution()["channels_last"] is True


def test_warm_up_then_cosine():
    from edgeprune.training import schedule

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.4)
    sched = schedule(opt, TrainConfig(epochs=3, lr=0.4, warmup_epochs=1), steps_per_epoch=4)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[4] == pytest.approx(0.4)  # linear up to lr
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:]))  # then cosine down


def test_compiled_training_matches_eager_within_float_tolerance():
    """--compile: the same math through torch.compile (one small model: compiling costs)."""
    from edgeprune.config import RunConfig

    d = data.load("digits").subset(64, seed=0)
    losses = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        m = ModelSpec(input_shape=d.input_shape, width=0.25).build()
        tr = Trainer(m, d, 2, TrainConfig(epochs=1, batch_size=64, lr=0.05), seed=0,
                     run=RunConfig(compile=compiled))
        losses[compiled] = tr.train_epoch()["loss"]
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


def test_skip_epochs_continues_the_schedule():
    from torch import nn

    d = data.load("digits").subset(256, 0)

    class Lin(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x, timesteps):
            return self.fc(x.flatten(1)).expand(timesteps, -1, -1)

    for warmup in (0, 1):
        cfg = TrainConfig(epochs=6, batch_size=32, warmup_epochs=warmup)
        full, late = Trainer(Lin(), d, 1, cfg, 0), Trainer(Lin(), d, 1, cfg, 0)
        late.skip_epochs(2)
        assert late.epoch == 2
        lrs = []
        for _ in range(6 * full.steps_per_epoch):
            lrs.append(full.opt.param_groups[0]["lr"])
            full.opt.step()
            full.sched.step()
        for i in range(4 * late.steps_per_epoch):
            assert late.opt.param_groups[0]["lr"] == pytest.approx(lrs[2 * full.steps_per_epoch + i])
            late.opt.step()
            late.sched.step()


def test_recomputed_batchnorm_statistics_lift_a_briefly_trained_deep_model_off_chance():
    """After 18 steps, VGG16's running BatchNorm statistics (momentum 0.1, starting at 0 / 1)
    left it at chance on held-out digits; recomputed for the final weights it is not. The
    weights are untouched and the global RNG is restored."""
    from edgeprune.config import ModelConfig
    from edgeprune.data import load
    from edgeprune.models import ModelSpec
    from edgeprune.training import evaluate, recompute_batchnorm

    ds = load("digits").split_validation(300 / 1437)
    torch.manual_seed(0)
    m = ModelSpec.for_data(ModelConfig(arch="vgg16", width=0.125), ds).build()
    Trainer(m, ds, 5, TrainConfig(epochs=1), seed=0).train_epoch()
    before = evaluate(m, ds.x_val, ds.y_val, 5)["accuracy"]
    weights = {k: v.clone() for k, v in m.state_dict().items() if "running" not in k
               and "num_batches" not in k}
    rng = torch.get_rng_state()
    assert recompute_batchnorm(m, ds.x_train, 5) == min(2048, len(ds.y_train))
    after = evaluate(m, ds.x_val, ds.y_val, 5)["accuracy"]
    assert before < 0.15 and after > 0.3, (before, after)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in weights.items())
    assert torch.equal(rng, torch.get_rng_state())
