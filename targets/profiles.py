"""Target profiles: what a device runs (ISA, execution provider, session options) and the gates
a model must pass on it (latency, memory, parity, accuracy drop).

Profiles are TOML files a user copies and edits. The schema below is strict: an unknown key or a
value of the wrong type is a one-line UserError, because a misspelt budget silently falling back
to its default would pass a gate the user meant to tighten.
"""
from __future__ import annotations

import math
import re
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from edgeprune.errors import UserError

from .tools import ISAS

PROFILE_DIR = Path(__file__).parent / "profiles"
OPT_LEVELS = ("disable", "basic", "extended", "all")
# A profile's name names files and folders (a validation's `<name>.runner`, a bundle's
# `c/<name>/`): one plain path component, never a path.
NAME_RULE = "1-64 letters, digits, '.', '_' or '-', not starting with '.'"
NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
# Timing plans beyond these are mistakes (10^9 runs would time for days), not budgets.
MAX_RUNS, MAX_WARMUP, MAX_BATCH, MAX_THREADS = 1_000_000, 100_000, 4096, 1024


@dataclass(frozen=True)
class Runtime:
    kind: str = "onnxruntime"  # a name in targets/registry.py's RUNTIMES: onnxruntime | c
    provider: str = "CPUExecutionProvider"  # onnxruntime only
    graph_optimization_level: str = "all"  # onnxruntime only
    intra_op_threads: int = 1  # onnxruntime only
    mcpu: str = ""  # c only: -mcpu for the compiler (the device's core), "" = compiler default
    march: str = ""  # c only: -march (x86: e.g. x86-64-v3 = AVX2), "" = compiler default


@dataclass(frozen=True)
class Latency:
    budget_ms: float = 10.0
    batch_size: int = 1
    percentile: float = 95.0
    warmup: int = 10
    runs: int = 200


@dataclass(frozen=True)
class Memory:
    budget_mb: float = 256.0


@dataclass(frozen=True)
class Parity:
    max_abs_logit_diff: float = 1e-3
    min_agreement: float = 0.99
    min_within_tolerance: float = 0.99  # share of inputs whose logits all lie within the bound
    # int8 weights move logits by design (near-threshold spikes flip): the int8 model is judged
    # by min_agreement and the accuracy drop; this bounds its |Δlogit| too when > 0.
    int8_max_abs_logit_diff: float = 0.0


@dataclass(frozen=True)
class Accuracy:
    max_drop: float = 0.01


@dataclass(frozen=True)
class Dense:
    """Gates against the dense model the ticket came from, measured on the same target in the
    same run: what the compression bought."""

    min_speedup: float = 0.0  # dense p50 / ticket p50 must reach this (0: reported, no gate)
    # Percentage points the ticket may lose against the dense model. 5 points: a destroyed
    # ticket (chance accuracy, 10% on 10 classes) always fails, while the paper's tickets
    # (within ~1-2 points) and this project's small-budget 97% tickets (digits: -3.6) pass.
    max_accuracy_drop: float = 5.0


@dataclass(frozen=True)
class Emulation:
    qemu_cpu: str = "cortex-a72"
    max_inputs: int = 64
    warmup: int = 2
    runs: int = 10


@dataclass(frozen=True)
class Remote:
    """A board reached over SSH (targets/ssh.py): the target runs there, not on this host."""

    host: str = ""  # USER@HOST[:PORT], or a Host alias of the ssh config
    ssh_config: str = ""  # a file passed as `ssh -F FILE` ("": the user's own ~/.ssh/config)
    python: str = "python3"  # the board's Python with numpy and onnxruntime (ONNX Runtime only)
    connect_timeout_s: int = 10
    timeout_s: int = 900  # for one run of the model there


@dataclass(frozen=True)
class Mcu:
    """A microcontroller (targets/boards.py): the C runtime built bare-metal and run on the
    board QEMU emulates; its firmware's flash and RAM, read from the ELF, are gated here."""

    board: str = ""  # a QEMU board in targets/boards.py: mps2-an386 (Cortex-M4), mps2-an500 (M7)
    flash_kb: float = 0.0  # gate: text + rodata + data of the firmware image (0: not gated)
    ram_kb: float = 0.0  # gate: data + bss + the stack reserve (0: not gated)
    stack_bytes: int = 4096  # the firmware's stack reserve (its measured peak is reported)


@dataclass(frozen=True)
class Profile:
    name: str
    isa: str
    description: str = ""
    source: str = ""  # where it was loaded from, for messages
    runtime: Runtime = field(default_factory=Runtime)
    latency: Latency = field(default_factory=Latency)
    memory: Memory = field(default_factory=Memory)
    parity: Parity = field(default_factory=Parity)
    accuracy: Accuracy = field(default_factory=Accuracy)
    dense: Dense = field(default_factory=Dense)
    emulation: Emulation | None = None
    remote: Remote | None = None
    mcu: Mcu | None = None

    def __post_init__(self):
        # Every Profile is checked, however it was made (a file, a bundle's manifest,
        # dataclasses.replace with a command-line budget): code may use its name as a path.
        where = f"target profile {self.source}" if self.source else "a target profile"
        check_name(self.name, where)
        _check_values(where, self)

    @property
    def kind(self) -> str:
        return self.runtime.kind

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("source")
        for name in UNSET_OMITTED:  # absent from a profile's id unless set, as before they existed
            if d.get(name) is None:
                d.pop(name, None)
        return d

    def with_remote(self, host: str | None = None, ssh_config: str | None = None,
                    python: str | None = None) -> "Profile":
        """This profile run on a board over SSH (the given fields override the profile's)."""
        from dataclasses import replace

        if host is None and ssh_config is None and python is None:
            return self
        r = self.remote or Remote()
        return replace(self, remote=replace(
            r, host=r.host if host is None else host,
            ssh_config=r.ssh_config if ssh_config is None else str(ssh_config),
            python=r.python if python is None else python))

    def with_latency_budget(self, budget_ms: float) -> "Profile":
        from dataclasses import replace

        return replace(self, latency=replace(self.latency, budget_ms=float(budget_ms)))

    def with_dense_gates(self, min_speedup: float | None = None,
                         max_accuracy_drop: float | None = None) -> "Profile":
        from dataclasses import replace

        d = self.dense
        if min_speedup is not None:
            d = replace(d, min_speedup=float(min_speedup))
        if max_accuracy_drop is not None:
            d = replace(d, max_accuracy_drop=float(max_accuracy_drop))
        return replace(self, dense=d)


SECTIONS = {"runtime": Runtime, "latency": Latency, "memory": Memory, "parity": Parity,
            "accuracy": Accuracy, "dense": Dense, "emulation": Emulation, "remote": Remote,
            "mcu": Mcu}
# Sections a profile has only when its file has them (None otherwise).
OPTIONAL_SECTIONS = ("emulation", "remote", "mcu")
# Sections left out of to_dict() when unset: added after artifact ids were first derived from
# profiles, so a profile without them keeps its ids.
UNSET_OMITTED = ("remote", "mcu")
TOP_KEYS = {"name": str, "description": str, "isa": str}


def builtin_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def load(name_or_path: str) -> Profile:
    """A builtin profile by name (`x86_64`, `arm64-cortex-a72`, ...) or a .toml file."""
    text = name_or_path.strip()
    path = Path(text)
    if text.endswith(".toml") or path.is_file():
        if not path.is_file():
            raise UserError(f"target profile {path} does not exist")
    else:
        path = PROFILE_DIR / f"{text}.toml"
        if not path.is_file():
            raise UserError(f"unknown target {text!r}: choose one of {', '.join(builtin_names())} "
                            "or give the path of a profile .toml")
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read target profile {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"target profile {path} is not valid TOML: {e}") from None
    return from_dict(raw, default_name=path.stem, source=str(path))


def load_many(spec: str) -> list[Profile]:
    """`--target a,b,path.toml`: each loaded, duplicates refused (same name twice is a typo)."""
    names = [s.strip() for s in spec.split(",")]
    if not spec.strip() or any(not n for n in names):
        raise UserError(f"--target {spec!r} has an empty entry: give names separated by commas")
    profiles = [load(n) for n in names]
    seen: set[str] = set()
    for p in profiles:
        if p.name in seen:
            raise UserError(f"target {p.name!r} is given twice in --target {spec!r}")
        seen.add(p.name)
    return profiles


def from_dict(raw: dict, default_name: str = "custom", source: str = "<dict>") -> Profile:
    where = f"target profile {source}"
    for key, value in raw.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise UserError(f"{where}: [{key}] must be a table, got {_tname(value)}")
        elif key in TOP_KEYS:
            _check_type(where, key, value, TOP_KEYS[key])
        else:
            raise UserError(f"{where}: unknown key {key!r} (known: "
                            f"{', '.join([*TOP_KEYS, *SECTIONS])})")
    if "isa" not in raw:
        raise UserError(f"{where}: missing required key 'isa' ({' or '.join(ISAS)})")
    if raw["isa"] not in ISAS:
        raise UserError(f"{where}: isa must be one of {', '.join(ISAS)}, got {raw['isa']!r}")
    sections = {name: _section(where, name, cls, raw.get(name, {}))
                for name, cls in SECTIONS.items() if name in raw or name not in OPTIONAL_SECTIONS}
    if raw["isa"] == "aarch64" and "emulation" not in raw:
        sections["emulation"] = Emulation()  # so the profile still runs on an x86-64 host
    if "name" not in raw:  # named after its file: say how to name it when that name is no name
        check_name(default_name, f"{where} (named after its file; set name = \"...\" in it)")
    return Profile(name=raw.get("name", default_name), isa=raw["isa"],
                   description=raw.get("description", ""), source=source, **sections)


def check_name(name: str, where: str) -> None:
    """A UserError unless `name` is a plain name (one path component)."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise UserError(f"{where}: name {str(name)[:80]!r} is not a plain name ({NAME_RULE})")


def _section(where: str, name: str, cls, values: dict):
    hints = {f.name: f.type for f in cls.__dataclass_fields__.values()}
    for key, value in values.items():
        if key not in hints:
            raise UserError(f"{where}: unknown key {name}.{key!r} (known: {', '.join(hints)})")
        _check_type(where, f"{name}.{key}", value, {"int": int, "float": float,
                                                      "str": str}[hints[key]])
    return cls(**{k: float(v) if hints[k] == "float" else v for k, v in values.items()})


def _check_type(where: str, key: str, value, want: type) -> None:
    # bool is an int in Python, but `runs = true` is a mistake; an int is fine where a float is.
    ok = (isinstance(value, want) and not isinstance(value, bool)) or (
        want is float and isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        raise UserError(f"{where}: {key} must be {want.__name__}, got {_tname(value)} {value!r}")


def _tname(v) -> str:
    return {bool: "bool", int: "int", float: "float", str: "str", dict: "table",
            list: "array"}.get(type(v), type(v).__name__)


def _remote_problems(r: Remote) -> list[str]:
    from .ssh import destination_problem

    problems = [f"remote.host {why}" for why in [destination_problem(r.host)] if why]
    if not r.python.strip() or any(c.isspace() for c in r.python):
        problems.append(f"remote.python must be one command name or path, got {r.python!r}")
    if not 1 <= r.connect_timeout_s <= 600 or not 1 <= r.timeout_s <= 86400:
        problems.append("remote.connect_timeout_s must be in [1, 600] and remote.timeout_s in "
                        "[1, 86400]")
    return problems


def _mcu_problems(p: Profile) -> list[str]:
    from .boards import BOARDS
    from .tools import MCU_ISAS

    if (p.mcu is not None) != (p.isa in MCU_ISAS):
        return [f"isa {', '.join(MCU_ISAS)} and an [mcu] table go together (a microcontroller "
                "is named by its board)"]
    if p.mcu is None:
        return []
    m, problems = p.mcu, []
    if m.board not in BOARDS:
        problems.append(f"mcu.board must be one of {', '.join(BOARDS)}, got {m.board!r}")
    if p.runtime.kind != "c" or p.remote is not None:
        problems.append("a microcontroller runs the C runtime (runtime.kind = \"c\"), on its "
                        "emulated board, not over [remote]")
    if m.flash_kb < 0 or m.ram_kb < 0:
        problems.append("mcu.flash_kb and mcu.ram_kb must be >= 0 (0: not gated)")
    if m.stack_bytes < 256 or m.stack_bytes % 8 or m.stack_bytes > 1 << 20:
        problems.append("mcu.stack_bytes must be a multiple of 8 in [256, 1048576]")
    return problems


def _check_values(where: str, p: Profile) -> None:
    problems = [f"{section}.{f.name} must be a finite number, got {value!r}"
                for section in SECTIONS if (table := getattr(p, section)) is not None
                for f in fields(table) if isinstance(value := getattr(table, f.name), float)
                and not math.isfinite(value)]
    plans = [("latency", p.latency)] + ([("emulation", p.emulation)] if p.emulation else [])
    problems += [f"{section}.{key} must be at most {most:,} (got {getattr(plan, key):,})"
                 for section, plan in plans
                 for key, most in (("runs", MAX_RUNS), ("warmup", MAX_WARMUP))
                 if getattr(plan, key) > most]
    if p.latency.batch_size > MAX_BATCH:
        problems.append(f"latency.batch_size must be at most {MAX_BATCH:,}")
    if p.runtime.intra_op_threads > MAX_THREADS:
        problems.append(f"runtime.intra_op_threads must be at most {MAX_THREADS:,}")
    if p.parity.int8_max_abs_logit_diff < 0:
        problems.append("parity.int8_max_abs_logit_diff must be >= 0 (0: not gated)")
    from .registry import RUNTIMES  # the registry's runtimes import this module

    if p.runtime.kind not in RUNTIMES:
        problems.append(f"runtime.kind must be one of {', '.join(RUNTIMES)}")
    if p.remote is not None:
        problems += _remote_problems(p.remote)
    problems += _mcu_problems(p)
    if p.dense.min_speedup < 0 or not 0 <= p.dense.max_accuracy_drop <= 100:
        problems.append("dense.min_speedup must be >= 0 and dense.max_accuracy_drop in [0, 100] "
                        "(percentage points)")
    if p.runtime.graph_optimization_level not in OPT_LEVELS:
        problems.append(f"runtime.graph_optimization_level must be one of {', '.join(OPT_LEVELS)}")
    if p.runtime.intra_op_threads < 0:
        problems.append("runtime.intra_op_threads must be >= 0")
    if p.latency.budget_ms <= 0:
        problems.append("latency.budget_ms must be > 0")
    if p.latency.batch_size < 1:
        problems.append("latency.batch_size must be >= 1")
    if not 0 < p.latency.percentile <= 100:
        problems.append("latency.percentile must be in (0, 100]")
    if p.latency.warmup < 0 or p.latency.runs < 1:
        problems.append("latency.warmup must be >= 0 and latency.runs >= 1")
    if p.memory.budget_mb <= 0:
        problems.append("memory.budget_mb must be > 0")
    if (p.parity.max_abs_logit_diff < 0 or not 0 <= p.parity.min_agreement <= 1
            or not 0 <= p.parity.min_within_tolerance <= 1):
        problems.append("parity.max_abs_logit_diff must be >= 0, parity.min_agreement and "
                        "parity.min_within_tolerance in [0, 1]")
    if not 0 <= p.accuracy.max_drop <= 1:
        problems.append("accuracy.max_drop must be in [0, 1] (a fraction, not a percentage)")
    if p.emulation is not None and (p.emulation.max_inputs < 1 or p.emulation.runs < 1
                                    or p.emulation.warmup < 0):
        problems.append("emulation.max_inputs and emulation.runs must be >= 1, "
                        "emulation.warmup >= 0")
    if problems:
        raise UserError(f"{where}: {problems[0]}")
