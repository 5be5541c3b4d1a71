"""What each stage is: the one schema of every option.

A stage's settings are small frozen dataclasses. Each field's type, default and `help` are the
single source of the command-line option (commands/options.py), the recipe key (recipe.py) and
the resolved config a manifest records (`asdict`). Nested dataclasses (a model's neuron) are
flattened into their fields. Values are checked in `__post_init__`, so a bad value is the same
one-line error whether it came from the command line, a recipe or Python.

Torch-free on purpose: targets/ reads these on a device without PyTorch.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from . import criteria
from .errors import UserError
from .search import methods as search_methods

ARCH_NAMES = ("convnet", "vgg16", "resnet19")
ENCODINGS = ("direct", "poisson")
POOLS = ("avg", "max")
SURROGATES = ("super", "triangle", "tanh", "circ", "heavi_erfc")
RESETS = ("value", "subtract")
RESET_GRADS = ("through", "detach")
OUTPUTS = ("logits", "all")
NIR_CONVENTIONS = ("nir", "norse", "snntorch", "sinabs", "spikingjelly", "rockpool",
                   "edgeprune")
GRANULARITIES = ("weight", "channel")  # edgeprune/search/run.py holds what each one prunes


def option(default: Any, help: str, *, flags: tuple[str, ...] = (), parse: Callable | None = None,
           show: str | None = None) -> Any:
    """A dataclass field that is also a command-line option and a recipe key.
    flags: the option's spellings (default `--field-name`); parse: turns the command line's text
    (or a recipe's string) into the value; show: how the default reads in --help."""
    meta = {"help": help, "flags": flags, "parse": parse, "show": show}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def check_rate(what: str, v, *, closed_low: bool = False) -> None:
    """A neuron's per-step rate: v in (0, 1] ([0, 1] with `closed_low`)."""
    _check(_number(v) and (0.0 <= v if closed_low else 0.0 < v) and v <= 1.0,
           f"{what} must be in {'[' if closed_low else '('}0, 1], got {v!r}")


def check_finite(what: str, v) -> None:
    _check(_number(v) and math.isfinite(v), f"{what} must be a finite number, got {v!r}")


def check_choice(what: str, v, choices: tuple) -> None:
    try:
        ok = bool(v in choices)
    except (TypeError, ValueError):  # an array, or a value that does not compare
        ok = False
    _check(ok, f"unknown {what} {v!r}: choose {', '.join(map(str, choices))}")


def check_surrogate(surrogate) -> None:
    check_choice("surrogate", surrogate, SURROGATES + ("heaviside",))


def check_model(arch: str, arch_names, width, pool: str, timesteps: int, encoding: str) -> None:
    """The model fields a train config and a model's spec share (a spec's width is resolved)."""
    _check(arch in arch_names,
           f"unknown architecture {arch!r}: choose {', '.join(arch_names)}")
    _check(width is None or width > 0, f"width must be positive, got {width}")
    _check(pool in POOLS, f"unknown pooling {pool!r}: choose avg or max")
    _check(timesteps >= 1, f"timesteps must be at least 1, got {timesteps}")
    _check(encoding in ENCODINGS, f"unknown encoding {encoding!r}: choose {', '.join(ENCODINGS)}")


def parse_ints(text) -> tuple[int, ...]:
    """'2,3,4' (or [2, 3, 4]) -> (2, 3, 4); '' -> ()."""
    if isinstance(text, (list, tuple)):
        items = list(text)
    else:
        items = [t for t in str(text).split(",") if t.strip()]
    try:
        return tuple(sorted({int(t) for t in items}))
    except (TypeError, ValueError):
        raise UserError(f"expected comma-separated integers, got {text!r}") from None


# -- run-wide: the data and the seed every stage of a run shares ------------------------------

@dataclass(frozen=True)
class DataConfig:
    name: Optional[str] = option(None, "digits, fashion-mnist[:DIR], cifar10:DIR, a directory "
                                 "of IDX/CIFAR files, or a .npz file.", flags=("--data",),
                                 show="the model's data; digits when training")
    train_subset: Optional[int] = option(None, "Use a seeded random subset of N training images.")
    test_subset: Optional[int] = option(None, "Evaluate on a seeded random subset of N test "
                                        "images (quick runs on a small machine).", show="all")
    val_fraction: float = option(0.0, "Hold this fraction of the training images out as a "
                                 "validation split (stratified, fixed): reported per epoch, and "
                                 "what --select best-val chooses on. The test set is never used "
                                 "to select anything.")

    def __post_init__(self):
        _check(self.train_subset is None or self.train_subset >= 2,
               f"--train-subset must be at least 2 (BatchNorm trains on batches of two images or "
               f"more), got {self.train_subset}")
        _check(self.test_subset is None or self.test_subset >= 1,
               f"--test-subset must be at least 1, got {self.test_subset}")
        _check(0.0 <= self.val_fraction < 1.0,
               f"--val-fraction must be in [0, 1), got {self.val_fraction}")


PRECISIONS = ("fp32", "bf16", "fp16")
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class RunConfig:
    """How a run executes. The seed and the precision change the math and so the artifact ids;
    the device, compile and memory format do not (beyond float rounding)."""

    seed: int = option(0, "Random seed (a run repeats exactly on CPU with the same number of "
                          "torch threads, OMP_NUM_THREADS).")
    device: str = option("cpu", "cpu, cuda or cuda:N.")
    precision: str = option("fp32", "fp32, bf16 or fp16: autocast for conv/linear layers; "
                            "membrane potentials and spikes stay fp32 (fp16 adds a gradient "
                            "scaler).")
    compile: bool = option(False, "torch.compile the network for training (a warm-up of tens "
                           "of seconds; pays off on a GPU over long runs).")
    channels_last: Optional[bool] = option(None, "Channels-last memory format for conv nets.",
                                           show="on for conv nets")

    def __post_init__(self):
        _check(0 <= self.seed <= MAX_SEED,  # torch seeds are 64-bit; stages add small offsets
               f"--seed must be between 0 and 2**63-1, got {self.seed}")
        _check(self.device in ("cpu", "cuda") or self.device.startswith("cuda:"),
               f"unknown device {self.device!r}: choose cpu, cuda or cuda:N")
        _check(self.precision in PRECISIONS,
               f"unknown precision {self.precision!r}: choose {', '.join(PRECISIONS)}")

    def identity(self) -> dict:
        """The part of a training artifact's id that comes from how it ran."""
        return {"seed": self.seed, **({"precision": self.precision}
                                      if self.precision != "fp32" else {})}


# -- train ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NeuronParams:
    """The LIF neuron (edgeprune.neurons): v = (1 - tau_mem_inv)·v + tau_mem_inv·x, spike when
    v > v_th, then reset."""

    tau_mem_inv: float = option(0.75, "LIF leak a: v = (1-a)·v + a·x (paper: 0.75).")
    v_th: float = option(1.0, "LIF threshold.")
    v_reset: float = option(0.0, "LIF reset potential (reset = value).")
    reset: str = option("value", "value (hard reset to v_reset) or subtract (v -= v_th).")
    surrogate: str = option("super", "Surrogate gradient: " + ", ".join(SURROGATES) + ".")
    alpha: float = option(10.0, "Surrogate sharpness (ignored by super).")
    reset_grad: str = option("through", "Gradient of the reset: through (autograd's, Norse's) "
                             "or detach (the reset is a constant: no gradient through the "
                             "spike that caused it). Training only; inference is the same.")
    tau_syn_inv: Optional[float] = option(None, "Synaptic current decay b per step: a "
                                          "current-based LIF (Norse LIFCell: i += x; "
                                          "v += a·(i − v); i −= b·i), state (v, i).",
                                          show="none: no synaptic current")

    def __post_init__(self):
        check_rate("tau_mem_inv", self.tau_mem_inv)
        if self.tau_syn_inv is not None:
            check_rate("tau_syn_inv", self.tau_syn_inv)
        check_finite("v_th", self.v_th)
        check_finite("v_reset", self.v_reset)
        check_choice("reset", self.reset, RESETS)
        check_choice("reset_grad", self.reset_grad, RESET_GRADS)
        check_surrogate(self.surrogate)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["tau_syn_inv"] is None:  # ids of box-LIF models stay what they were
            del d["tau_syn_inv"]
        if d["reset_grad"] == "through":  # likewise for models trained before the option
            del d["reset_grad"]
        return d


@dataclass(frozen=True)
class ModelConfig:
    arch: str = option("convnet", "Architecture: " + ", ".join(ARCH_NAMES) + ".")
    width: Optional[float] = option(None, "Channel width multiplier (vgg16/resnet19 at 1.0 are "
                                    "the paper's sizes).",
                                    show="2 for convnet on images up to 16x16, else 1")
    pool: str = option("avg", "Pooling: avg (NIR-exportable) or max.")
    timesteps: int = option(5, "Timesteps T.", flags=("--timesteps", "-T"))
    encoding: str = option("direct", "direct (the first conv sees the image once) or poisson.")
    neuron: NeuronParams = field(default_factory=NeuronParams)

    def __post_init__(self):
        check_model(self.arch, ARCH_NAMES, self.width, self.pool, self.timesteps, self.encoding)


@dataclass(frozen=True)
class Schedule:
    """SGD with momentum and a cosine learning-rate schedule: what every training stage shares."""

    batch_size: int = option(64, "Batch size.")
    lr: float = option(0.1, "Initial learning rate (SGD, cosine schedule).")
    momentum: float = option(0.9, "SGD momentum.")
    weight_decay: float = option(5e-4, "SGD weight decay.")
    warmup_epochs: int = option(0, "Epochs of linear learning-rate warm-up before the cosine "
                                "schedule (for large batches: scale --lr with --batch-size).")

    def __post_init__(self):
        _check(self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}")
        _check(self.warmup_epochs >= 0, f"warmup epochs must be >= 0, got {self.warmup_epochs}")
        _check(self.lr > 0, f"learning rate must be positive, got {self.lr}")
        _check(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        _check(self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}")

    def schedule(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(Schedule)}


@dataclass(frozen=True)
class TrainConfig(Schedule):
    """Loss = mean over timesteps of the per-step cross-entropy."""

    epochs: int = option(30, "Training epochs.")
    augment: bool = option(False, "Random shifts (and flips for CIFAR).")

    def __post_init__(self):
        super().__post_init__()
        _check(self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- search -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImpSettings:
    """Iterative magnitude pruning (methods imp, et-imp)."""

    prune_rate: float = option(0.25, "IMP: fraction of the remaining weights pruned per round.")

    def __post_init__(self):
        _check(0.0 < self.prune_rate < 1.0, f"prune rate must be in (0, 1), got {self.prune_rate}")


@dataclass(frozen=True)
class EarlyBirdSettings:
    """Early-Bird's stop rule (methods eb, et-eb)."""

    q: int = option(5, "Early-Bird: masks in the comparison window.", flags=("--eb-q",))
    tau: float = option(0.02, "Early-Bird: stop when all mask distances are below this.",
                        flags=("--eb-tau",))

    def __post_init__(self):
        _check(self.q >= 2, f"eb-q must be at least 2, got {self.q}")
        _check(0.0 < self.tau < 1.0, f"eb-tau must be in (0, 1), got {self.tau}")


@dataclass(frozen=True)
class EarlyTimeSettings:
    """How Early-Time picks the timesteps T' a method searches at (the et-* methods)."""

    epochs: int = option(2, "Early-Time: epochs at full T before scoring timesteps.",
                         flags=("--et-epochs",))
    lam: float = option(0.6, "Early-Time: normalized-KL threshold for picking T'.",
                        flags=("--et-lambda",))
    candidates: tuple[int, ...] = option((), "Early-Time: candidate T' list, e.g. 2,3,4 (the "
                                         "paper's).", flags=("--et-candidates",),
                                         parse=parse_ints, show="1..T-1")
    batch: int = option(256, "Early-Time: training images in the scoring batch.",
                        flags=("--et-batch",))

    def __post_init__(self):
        _check(self.epochs >= 0, f"et-epochs must be >= 0, got {self.epochs}")
        _check(self.lam > 0, f"et-lambda must be positive, got {self.lam}")
        _check(all(t >= 1 for t in self.candidates),
               f"et-candidates must be positive timesteps, got {self.candidates}")
        _check(self.batch >= 1, f"et-batch must be at least 1, got {self.batch}")


@dataclass(frozen=True)
class SearchConfig(Schedule):
    """A ticket search: a method (edgeprune/search/methods.py), a ranking criterion
    (edgeprune/criteria.py), what every method shares, and each method's own settings as a
    nested table. Options and recipe keys are the leaf names (--prune-rate, --eb-q, ...)."""

    method: str = option("et-imp", search_methods.help_text())
    sparsity: float = option(0.97, "Target fraction of conv/linear weights set to zero.")
    rewind_epoch: Optional[int] = option(None, "Rewind to the dense run's weights after this many "
                                         "epochs (0 = initialization).",
                                         show="the dense run's late-rewinding point; an "
                                         "imported model's own weights")
    round_epochs: int = option(10, "IMP: epochs per round; EB: epoch budget.")
    scope: str = option("lamp", criteria.help_text())
    keep_first: bool = option(False, "Keep the first conv layer dense.")
    keep_last: bool = option(False, "Keep the classifier layer dense.")
    cost_exponent: float = option(0.5, "--scope cost: LAMP divided by (uses per inference) "
                                  "to this power; 1 is score per use, which on a width-0.5 "
                                  "digits convnet gave the classifier nearly every weight and "
                                  "emptied the stem (its weights are used ~10,000x as often).")
    granularity: str = option("weight", "weight: prune single weights; channel: whole output "
                              "channels and neurons (ranked by the BatchNorm gamma after them, "
                              "else the L1 norm of their weights) with the weights reading "
                              "them, which compaction removes from the exported layers; the "
                              "sparsity reached is the nearest whole channels allow.")
    imp: ImpSettings = field(default_factory=ImpSettings)
    eb: EarlyBirdSettings = field(default_factory=EarlyBirdSettings)
    et: EarlyTimeSettings = field(default_factory=EarlyTimeSettings)

    def __post_init__(self):
        super().__post_init__()
        _check(self.method in search_methods.NAMES,
               f"unknown method {self.method!r}: choose {', '.join(search_methods.NAMES)}")
        _check(0.0 < self.sparsity < 1.0, f"sparsity must be in (0, 1), got {self.sparsity}")
        _check(self.round_epochs >= 1, f"round epochs must be at least 1, got {self.round_epochs}")
        _check(self.rewind_epoch is None or self.rewind_epoch >= 0,
               f"rewind epoch must be >= 0, got {self.rewind_epoch}")
        _check(self.scope in criteria.NAMES,
               f"unknown scope {self.scope!r}: choose {', '.join(criteria.NAMES)}")
        check_choice("granularity", self.granularity, GRANULARITIES)
        _check(_number(self.cost_exponent) and 0 < self.cost_exponent <= 4,
               f"--cost-exponent must be in (0, 4], got {self.cost_exponent!r}")

    @property
    def early_time(self) -> bool:
        return self.method.startswith(search_methods.ET)

    @property
    def base(self) -> str:
        """The mask search proper: imp, eb, random or reinit."""
        return search_methods.base(self.method).name

    def train_config(self, epochs: int) -> TrainConfig:
        return TrainConfig(epochs=epochs, **self.schedule())

    def to_dict(self) -> dict:
        """{option name: value}, flat: the settings tables are read by their leaf names, and
        artifact ids (which hash this) stay those of the flat schema before them. Fields added
        since that schema are left out at the default that reproduces the older behaviour, so
        older searches keep their ids."""
        values = {f.name: _at(self, f.path) for f in fields_of(SearchConfig)}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()
                if k not in SINCE or SINCE[k] != v}


# fields added to SearchConfig after its ids were first hashed -> the default that reproduces
# the behaviour before them (left out of to_dict at that value)
SINCE = {"granularity": "weight", "cost_exponent": 0.5}


def _at(obj, path: tuple[str, ...]):
    for part in path:
        obj = getattr(obj, part)
    return obj


# -- retrain ----------------------------------------------------------------------------------

SELECT = ("last", "best-val")
INIT = ("rewind", "trained")


@dataclass(frozen=True)
class RetrainConfig(Schedule):
    epochs: Optional[int] = option(None, "Ticket retraining epochs.", show="as the dense model")
    augment: bool = option(False, "Random shifts (and flips for CIFAR).")
    select: str = option("last", "last: keep the final epoch; best-val: the epoch with the best "
                         "validation accuracy (needs --val-fraction).")
    init: str = option("rewind", "rewind: restart from the ticket's rewind weights (the paper); "
                       "trained: from the weights its mask was drawn from (learning-rate "
                       "rewinding, Renda et al.; imp searches).")
    lr_resume: bool = option(False, "With weight rewinding to epoch k, continue the dense run's "
                             "learning-rate schedule from epoch k instead of a fresh one.")

    def __post_init__(self):
        super().__post_init__()
        _check(self.epochs is None or self.epochs >= 1,
               f"epochs must be at least 1, got {self.epochs}")
        _check(self.select in SELECT, f"unknown --select {self.select!r}: choose "
               f"{' or '.join(SELECT)}")
        _check(self.init in INIT, f"unknown --init {self.init!r}: choose {' or '.join(INIT)}")

    def train_config(self, dense_epochs: int | None) -> TrainConfig:
        return TrainConfig(epochs=self.epochs or dense_epochs or 30, augment=self.augment,
                           **self.schedule())


# -- export, validate, package ------------------------------------------------------------------

@dataclass(frozen=True)
class ExportConfig:
    outputs: str = option("logits", "logits: summed logits only; all: also step_logits "
                          "(T,batch,classes) and spikes.<layer> (per-sample spike totals).")
    opset: int = option(17, "ONNX opset (13 to 20).")
    sparse_initializers: bool = option(True, "Store mostly-zero weights as ONNX sparse "
                                       "initializers where that is smaller (smaller files; ONNX "
                                       "Runtime densifies them at load).")
    compact: bool = option(True, "Remove the units the ticket made dead (no incoming or no "
                           "outgoing weights), exactly: spikes and logits unchanged, checked "
                           "at export.")
    int8: Optional[bool] = option(None, "int8 weights (per-channel QDQ) in model.int8.onnx, "
                                  "kept where validation's parity and accuracy gates pass; "
                                  "--int8 makes a failing int8 model a failed gate (exit 1).",
                                  flags=("--int8/--no-int8",),
                                  show="tried, kept where it passes")
    c_runtime: Optional[bool] = option(None, "Write the event-driven sparse C runtime (C99 "
                                       "sources) for the c-* targets; --c-runtime makes it an "
                                       "error when the model cannot be expressed.",
                                       flags=("--c-runtime/--no-c-runtime",),
                                       show="when the C runtime can express the model")
    c_dense_rows: float = option(0.3, "C runtime: a conv whose weights are at least this "
                                 "dense stores its rows whole (zeros included): updates "
                                 "vectorized across output channels, faster, more bytes; above "
                                 "1 never.")
    nir: Optional[bool] = option(None, "Also write model.nir; --nir makes it an error when NIR "
                                 "cannot express the model.", flags=("--nir/--no-nir",),
                                 show="when NIR can express the model")
    timesteps: Optional[int] = option(None, "Timesteps to unroll.", flags=("--timesteps", "-T"),
                                      show="the model's T")
    probe: int = option(256, "Test images in the export's parity check against PyTorch.")

    def __post_init__(self):
        _check(self.outputs in OUTPUTS,
               f"unknown --outputs {self.outputs!r}: choose {' or '.join(OUTPUTS)}")
        # 13: ReduceSum with axes input; 20: the newest the TorchScript exporter knows
        _check(13 <= self.opset <= 20, f"--opset {self.opset} is not supported: choose 13 to 20")
        _check(self.timesteps is None or self.timesteps >= 1,
               f"timesteps must be at least 1, got {self.timesteps}")
        _check(self.probe >= 1, f"--probe must be at least 1, got {self.probe}")
        _check(self.c_dense_rows >= 0, f"--c-dense-rows must be >= 0, got {self.c_dense_rows}")


@dataclass(frozen=True)
class ValidateConfig:
    # None: the default targets, resolved by the command (pipeline.default_targets for
    # compress); a manifest records the resolved profiles, never None
    target: Optional[str] = option(None, "Profiles, comma-separated: x86_64, "
                                   "arm64-cortex-a72, arm64-neoverse-n1 (ONNX Runtime), "
                                   "c-x86_64, c-arm64-cortex-a72 (C runtime), or .toml paths.",
                                   show="x86_64; compress adds c-x86_64 where a C compiler "
                                   "is found")
    latency_budget_ms: Optional[float] = option(None, "Override every profile's latency budget.",
                                                show="the profile's")
    limit: Optional[int] = option(None, "Use only the first N test images.", show="all")
    dense: bool = option(True, "Also measure the dense model the ticket came from (found "
                         "through the artifacts' lineage) on every target in the same run: "
                         "speed-up, size ratio, accuracy drop.")
    min_speedup: Optional[float] = option(None, "Fail (exit 1) unless dense p50 / ticket p50 "
                                          "reaches this on every natively run target.",
                                          show="the profile's (0: no gate)")
    max_accuracy_drop: Optional[float] = option(None, "Fail (exit 1) when the ticket loses more "
                                                "than this many percentage points of accuracy "
                                                "against the dense model.",
                                                show="the profile's (5)")
    remote: Optional[str] = option(None, "Run the targets on a board over SSH: USER@HOST[:PORT] "
                                   "or a Host alias of the ssh config (the system OpenSSH "
                                   "client, your keys, BatchMode); its latency and memory are "
                                   "gated.", show="the profile's [remote], else this host")
    ssh_config: Optional[str] = option(None, "The ssh config file for --remote (ssh -F FILE).",
                                       show="~/.ssh/config")
    remote_python: Optional[str] = option(None, "The board's Python with numpy and onnxruntime "
                                          "(ONNX Runtime targets on --remote).",
                                          show="python3")

    def __post_init__(self):
        _check(self.latency_budget_ms is None or self.latency_budget_ms > 0,
               "--latency-budget-ms must be positive")
        _check(self.min_speedup is None or self.min_speedup >= 0,
               "--min-speedup must be >= 0")
        _check(self.max_accuracy_drop is None or 0 <= self.max_accuracy_drop <= 100,
               "--max-accuracy-drop must be in [0, 100] (percentage points)")
        _check(self.limit is None or self.limit >= 1, "--limit must be at least 1")


@dataclass(frozen=True)
class PackageConfig:
    ort: bool = option(False, "Also convert the model to ONNX Runtime's .ort format.")
    sign: Optional[str] = option(None, "Sign the bundle with this OpenSSH private key (or a "
                                 ".pub whose key ssh-agent holds), via `ssh-keygen -Y sign`; "
                                 "`verify --trust KEY.pub` checks it.", show="unsigned")

    def __post_init__(self):
        _check(self.sign is None or bool(self.sign.strip()), "--sign needs a key file")


# -- import -----------------------------------------------------------------------------------

def parse_floats(text) -> tuple[float, ...]:
    """'0.5,0.25' (or [0.5, 0.25]) -> (0.5, 0.25)."""
    items = list(text) if isinstance(text, (list, tuple)) else \
        [t for t in str(text).split(",") if t.strip()]
    try:
        return tuple(float(t) for t in items)
    except (TypeError, ValueError):
        raise UserError(f"expected comma-separated numbers, got {text!r}") from None


def parse_shape(text) -> tuple[int, ...]:
    shape = parse_floats(text)
    if any(v != int(v) or v < 1 for v in shape):
        raise UserError(f"expected positive integers C,H,W, got {text!r}")
    return tuple(int(v) for v in shape)


@dataclass(frozen=True)
class ImportConfig:
    """How to run a model brought from elsewhere (its file does not say)."""

    timesteps: int = option(5, "Timesteps T the model runs.", flags=("--timesteps", "-T"))
    encoding: str = option("direct", "direct (the image at every step) or poisson.")
    input_shape: tuple[int, ...] = option((), "C,H,W of the input, without --data.",
                                          parse=parse_shape, show="the data's")
    num_classes: Optional[int] = option(None, "Classes, without --data.", show="the data's")
    mean: tuple[float, ...] = option((), "Per-channel mean your model expects subtracted "
                                     "(comma-separated).", parse=parse_floats, show="none")
    std: tuple[float, ...] = option((), "Per-channel std your model expects divided by.",
                                    parse=parse_floats, show="none")
    dt: Optional[float] = option(None, "NIR: the time step the graph's equations are "
                                 "integrated with (NIR graphs carry none; Norse writes with "
                                 "1e-3, snnTorch and SpikingJelly with 1e-4, Sinabs in steps: "
                                 "1).",
                                 show="the graph's metadata, else its convention's")
    convention: Optional[str] = option(None, "NIR: how to read the neurons: nir (forward Euler, "
                                       "reset in the same step), norse (nir with dt 1e-3), "
                                       "snntorch (snnTorch's arithmetic and one-step-late "
                                       "reset, dt 1e-4), sinabs (Sinabs' layer defaults: "
                                       "multi-spike, subtractive reset, dt 1), spikingjelly "
                                       "(its charge and >= threshold, dt 1e-4), rockpool "
                                       "(batch/time in the Input, CubaLIF as LIFTorch, dt "
                                       "1e-3), edgeprune (exact, from its "
                                       "metadata).",
                                       show="the graph's metadata or fingerprint, else asked")
    accept_mismatch: bool = option(False, "NIR: import even when the import's own checks fail "
                                   "(spikes collapse, chance accuracy, a reference disagrees); "
                                   "the failures stay in the artifact's metrics.")

    def __post_init__(self):
        _check(self.dt is None or (math.isfinite(self.dt) and self.dt > 0),
               f"--dt must be a positive number of seconds, got {self.dt}")
        _check(self.convention is None or self.convention in NIR_CONVENTIONS,
               f"unknown --convention {self.convention!r}: choose {', '.join(NIR_CONVENTIONS)}")
        _check(self.timesteps >= 1, f"timesteps must be at least 1, got {self.timesteps}")
        _check(self.encoding in ENCODINGS,
               f"unknown encoding {self.encoding!r}: choose {', '.join(ENCODINGS)}")
        _check(self.num_classes is None or self.num_classes >= 1,
               f"--num-classes must be at least 1, got {self.num_classes}")
        _check(len(self.input_shape) in (0, 3), f"--input-shape must be C,H,W, got "
               f"{','.join(map(str, self.input_shape))}")


# -- the schema -------------------------------------------------------------------------------

RUN_WIDE = (DataConfig, RunConfig)  # set at a recipe's top level; every stage of a run shares them
STAGES: dict[str, tuple[type, ...]] = {
    "import": (ImportConfig,),
    "train": (ModelConfig, TrainConfig),
    "search": (SearchConfig,),
    "retrain": (RetrainConfig,),
    "export": (ExportConfig,),
    "validate": (ValidateConfig,),
    "package": (PackageConfig,),
}


@dataclass(frozen=True)
class Field:
    """One leaf option of a config dataclass (nested dataclasses flattened)."""

    name: str  # option name, snake_case: the recipe key and the Python parameter
    path: tuple[str, ...]  # attribute path inside the top dataclass, e.g. ("neuron", "v_th")
    type: Any  # the value's type: int, float, bool, str, tuple (parsed), Optional[...]
    default: Any
    help: str
    flags: tuple[str, ...]
    parse: Callable | None
    show: str | None

    @property
    def optional(self) -> bool:
        return _is_optional(self.type)

    @property
    def base(self) -> type:
        """The type without Optional: what a given value must be."""
        if self.optional:
            return next(a for a in typing.get_args(self.type) if a is not type(None))
        origin = typing.get_origin(self.type)
        return origin if origin is not None else self.type


def _is_optional(t) -> bool:
    return (typing.get_origin(t) in (typing.Union, types.UnionType)
            and type(None) in typing.get_args(t))


def fields_of(cls: type, prefix: tuple[str, ...] = ()) -> list[Field]:
    """Every leaf option of `cls`, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            out += fields_of(t, prefix + (f.name,))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        m = f.metadata
        flags = tuple(m.get("flags") or ())
        out.append(Field(_option_name(f.name, flags), prefix + (f.name,), t, default,
                         m.get("help", ""), flags, m.get("parse"), m.get("show")))
    return out


def _option_name(attr: str, flags: tuple[str, ...]) -> str:
    """The first long flag names the option (`--data` for DataConfig.name), else the field."""
    for flag in flags:
        if flag.startswith("--"):
            return flag[2:].split("/")[0].replace("-", "_")
    return attr


def coerce(f: Field, value: Any, where: str) -> Any:
    """A value from a recipe (TOML types) or parsed text, checked against the field's type."""
    if value is None and f.optional:
        return None
    if f.parse is not None:
        return f.parse(value)
    want = f.base
    ok = isinstance(value, want) and not (want in (int, float) and isinstance(value, bool))
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise UserError(f"{where}: {f.name} must be {want.__name__}, got "
                        f"{type(value).__name__} {value!r}")
    return value


def build(cls: type, values: dict[str, Any]):
    """An instance of `cls` from {option name: value}; missing options keep their defaults."""
    kwargs: dict = {}
    for f in fields_of(cls):
        if f.name in values:
            node = kwargs
            for part in f.path[:-1]:
                node = node.setdefault(part, {})
            node[f.path[-1]] = values[f.name]
    return _instantiate(cls, kwargs)


def _instantiate(cls: type, kwargs: dict):
    hints = typing.get_type_hints(cls)
    return cls(**{k: _instantiate(hints[k], v) if dataclasses.is_dataclass(hints[k]) else v
                  for k, v in kwargs.items()})


def resolved(obj) -> dict:
    """The fully resolved config of a dataclass instance, JSON-ready (for manifests)."""
    d = dataclasses.asdict(obj)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def fields_of_stage(stage: str) -> list[Field]:
    return [f for cls in STAGES[stage] for f in fields_of(cls)]
