"""What a ticket search is: a method and every knob, with the paper's defaults."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import UserError

METHODS = ("imp", "et-imp", "eb", "et-eb", "random", "reinit")
SCOPES = ("global", "layer")


@dataclass(frozen=True)
class SearchConfig:
    method: str = "et-imp"
    sparsity: float = 0.97  # fraction of prunable (conv + linear) weights set to zero
    prune_rate: float = 0.25  # IMP: fraction of the remaining weights pruned per round
    rewind_epoch: int | None = None  # None: the dense run's recorded late-rewinding point
    round_epochs: int = 10  # IMP: training epochs per round; EB: epoch budget
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    scope: str = "global"  # global magnitude ranking, or per layer
    keep_first: bool = False  # keep the first conv dense
    keep_last: bool = False  # keep the classifier dense
    eb_q: int = 5  # Early-Bird: masks compared (newest vs the q-1 before it)
    eb_tau: float = 0.02  # Early-Bird: stop when every distance is below this
    et_epochs: int = 2  # Early-Time: epochs at full T before scoring timesteps
    et_lambda: float = 0.6  # Early-Time: pick the smallest T' with normalized KL below this
    et_candidates: tuple[int, ...] = ()  # Early-Time: T' to score; () = 1..T-1 (paper: 2..T-1)
    et_batch: int = 256  # Early-Time: training images in the scoring batch

    def __post_init__(self):
        if self.method not in METHODS:
            raise UserError(f"unknown method {self.method!r}: choose {', '.join(METHODS)}")
        if not 0.0 < self.sparsity < 1.0:
            raise UserError(f"sparsity must be in (0, 1), got {self.sparsity}")
        if not 0.0 < self.prune_rate < 1.0:
            raise UserError(f"prune rate must be in (0, 1), got {self.prune_rate}")
        if self.round_epochs < 1:
            raise UserError(f"round epochs must be at least 1, got {self.round_epochs}")
        if self.rewind_epoch is not None and self.rewind_epoch < 0:
            raise UserError(f"rewind epoch must be >= 0, got {self.rewind_epoch}")
        if self.scope not in SCOPES:
            raise UserError(f"unknown scope {self.scope!r}: choose global or layer")
        if self.eb_q < 2:
            raise UserError(f"eb-q must be at least 2, got {self.eb_q}")
        if not 0.0 < self.eb_tau < 1.0:
            raise UserError(f"eb-tau must be in (0, 1), got {self.eb_tau}")
        if self.et_epochs < 0:
            raise UserError(f"et-epochs must be >= 0, got {self.et_epochs}")
        if self.et_lambda <= 0:
            raise UserError(f"et-lambda must be positive, got {self.et_lambda}")
        if any(t < 1 for t in self.et_candidates):
            raise UserError(f"et-candidates must be positive timesteps, got {self.et_candidates}")
        if self.batch_size < 1 or self.lr <= 0:
            raise UserError("batch size must be >= 1 and learning rate positive")

    @property
    def early_time(self) -> bool:
        return self.method.startswith("et-")

    @property
    def base(self) -> str:
        """The mask search proper: imp, eb, random or reinit."""
        return self.method.removeprefix("et-")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["et_candidates"] = list(self.et_candidates)
        return d


def parse_candidates(text: str) -> tuple[int, ...]:
    """'2,3,4' -> (2, 3, 4); '' -> ()."""
    try:
        return tuple(sorted({int(t) for t in text.split(",") if t.strip()}))
    except ValueError:
        raise UserError(f"et-candidates must be comma-separated integers, got {text!r}") from None
