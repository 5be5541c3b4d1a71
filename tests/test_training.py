import torch

from edgeprune import data
from edgeprune.models import ModelSpec
from edgeprune.config import TrainConfig
from edgeprune.trainer import Trainer, evaluate, loss_fn, predict


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
