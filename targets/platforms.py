"""Platforms: where a target's code executes and how it is built for there. Torch-free.

    Native     this host, the profile's ISA is the host's: latency and memory are the device's
    QemuUser   an aarch64 build on an x86-64 host under qemu-aarch64 user mode: outputs are
               real, latency is not indicative (emulated), so its budgets are not gated
    QemuSystem a Cortex-M board emulated by qemu-system-arm (a profile's [mcu]): the C runtime
               as bare-metal firmware; outputs, flash and RAM are real (gated), latency is not
    Ssh        a board over SSH (a profile's [remote], or --remote): built here for the board's
               ISA, copied there and run there; its latency and memory are real and gated

A platform runs the programs the runtimes hand it: a Python script with a job folder (the ONNX
Runtime runner, targets/runner.py), and a C program of the kind its `c_program` names
(targets/runtimes.py: "runner", an executable fed on stdin; "firmware", an image for a board). Which platform serves a profile is decided in targets/registry.py.
"""
from __future__ import annotations

import json
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from edgeprune.errors import UserError

from . import boards, c_build, child, emulation, mcu_build, tools
from .profiles import Profile
from .ssh import Board, last_line
from .tools import host_isa

Progress = Callable[[str], None]
EMULATED_NOTE = "emulated (qemu-aarch64): latency is not indicative of the device"


class Platform:
    mode = "native"  # what a report calls it: native | emulated | remote
    indicative = True  # its latency and memory are the device's: the budgets are gated
    latency_note = None  # set where latency means nothing for the device
    timeout_s = 900  # for one run of a model
    static = False  # C executables are linked statically (there is no sysroot there)
    setup_seconds = 0.0  # spent preparing it in this validation (QEMU's emulated Python)
    c_program = "runner"  # the C runtime here: a POSIX runner (c_target) or firmware (mcu_target)

    def __init__(self, isa: str):
        self.isa = isa

    @classmethod
    def serves(cls, profile: Profile) -> bool:
        raise NotImplementedError

    @classmethod
    def from_profile(cls, profile: Profile, shared: dict) -> "Platform":
        """`shared`: what platforms of one validation share (the emulator, set up once)."""
        return cls(profile.isa)

    def tools(self) -> list[tools.Tool]:
        """The tools this host needs to execute here (the runtime adds its own)."""
        return []

    def check_host(self) -> None:
        """A UserError naming the package when a tool it needs is missing here."""
        for tool in self.tools():
            if tool.find() is None:
                raise UserError(f"{tool.label} ({', '.join(tool.names)}) is not installed: "
                                f"install it with `apt-get install {tool.package}` "
                                f"(Debian/Ubuntu) {tools.SEE_DOCTOR}")

    def doctor_notes(self, runtime) -> dict:
        """What `edgeprune doctor` says about running `runtime` here ({"note": ...})."""
        return {}

    def compiler(self) -> tools.Tool | None:
        """The C compiler that builds for this platform on this host."""
        return tools.compiler_for(self.isa)

    def check_c_build(self) -> None:
        """A UserError naming the package when this host cannot build C for here."""
        c_build.find_tools(self.isa)

    def build_c(self, src: Path, out: Path, profile: Profile,
                extra_flags: tuple[str, ...] = ()) -> c_build.CBuild:
        """Compile the generated C runtime in `src` into `out` for here."""
        march = (f"-march={profile.runtime.march}",) if profile.runtime.march else ()
        return c_build.build(src, out, isa=profile.isa, mcpu=profile.runtime.mcpu or None,
                             extra_flags=(*march, *extra_flags),
                             static=self.static)

    def plan(self, profile: Profile):
        """The timing plan (warmup, runs): the profile's [emulation] where latency is not
        indicative, else its [latency]."""
        if not self.indicative and profile.emulation is not None:
            return profile.emulation
        return profile.latency

    def max_inputs(self, profile: Profile) -> int | None:
        """How many inputs a validation feeds here (None: all)."""
        if not self.indicative and profile.emulation is not None:
            return profile.emulation.max_inputs
        return None

    @contextmanager
    def session(self):
        """Held around the runs of one model (a remote folder, for a board)."""
        yield self

    def call(self, argv: list[str], what: str, *, input: bytes | str | None = None,
             text: bool = False, env: dict | None = None) -> subprocess.CompletedProcess:
        try:
            return child.run(argv, input=input, text=text, env=env, timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            raise UserError(f"{what}: the {self.mode} run took over {self.timeout_s} s; lower "
                            "the profile's runs or max_inputs") from None

    # -- the C runner: an executable fed on stdin -------------------------------------------

    def c_argv(self, build: c_build.CBuild, args: list[str]) -> list[str]:
        """argv that runs the built C runner with `args`."""
        if not build.runner.is_file():
            raise UserError(f"the C runner {build.runner} does not exist: build it first")
        return [str(build.runner), *args]

    def c_command(self, build) -> str:
        """How the C runner was run, for the report."""
        return f"runner ({Path(build.compiler).name} {' '.join(build.flags)})"

    # -- the ONNX Runtime runner: a Python script and a job folder --------------------------

    def run_script(self, script: Path, job_dir: Path, files: dict[str, Path], job: dict,
                   what: str, progress: Progress, needs: tuple[str, ...] = ()
                   ) -> tuple[subprocess.CompletedProcess, str]:
        """Run `script JOB_DIR` with job.json (`job` plus the paths of `files`, by key) and
        the job folder's inputs; its outputs are left in `job_dir`. `needs`: the modules the
        script imports (this host's are checked before a run, by the caller)."""
        (job_dir / "job.json").write_text(json.dumps(
            {**job, **{k: str(Path(v).resolve()) for k, v in files.items()}}))
        argv, env, command = self.script_argv([str(script), str(job_dir)], progress)
        return self.call(argv, what, text=True, env=env), command

    def script_argv(self, args: list[str], progress: Progress) -> tuple[list[str], dict | None,
                                                                         str]:
        # -I: no user site, no PYTHON* variables, no cwd on sys.path: only the installed
        # numpy/onnxruntime, as on a device.
        return [sys.executable, "-I", *args], None, "native"


class Native(Platform):
    @classmethod
    def serves(cls, profile: Profile) -> bool:
        return profile.isa == host_isa()


class QemuUser(Platform):
    mode = "emulated"
    indicative = False
    latency_note = EMULATED_NOTE
    timeout_s = 1800
    static = True  # qemu-aarch64-static runs a static binary without a sysroot

    def __init__(self, isa: str = "aarch64", core: str = "cortex-a72",
                 shared: dict | None = None):
        super().__init__(isa)
        self.core = core
        self.shared = {} if shared is None else shared

    @classmethod
    def serves(cls, profile: Profile) -> bool:
        return profile.isa == "aarch64" and host_isa() == "x86_64"

    @classmethod
    def from_profile(cls, profile: Profile, shared: dict) -> "QemuUser":
        core = profile.emulation.qemu_cpu if profile.emulation else "cortex-a72"
        return cls(profile.isa, core, shared)

    def tools(self) -> list[tools.Tool]:
        return [tools.QEMU]

    def check_host(self) -> None:
        emulation.find_qemu()

    def doctor_notes(self, runtime) -> dict:
        if not runtime.self_contained and not emulation.ready():
            return {"note": "the first run builds the emulator: needs the Debian mirror and PyPI",
                    "emulator_cache": str(emulation.cache_root())}
        return {"note": "emulated: parity is real, latency is not indicative"}

    def emulator(self, progress: Progress) -> emulation.Emulator:
        """The emulated Python with onnxruntime, built on first use (shared by a validation)."""
        if "emulator" not in self.shared:
            self.shared["emulator"] = emulation.setup(progress)
        return self.shared["emulator"]

    @property
    def setup_seconds(self) -> float:
        emu = self.shared.get("emulator")
        return emu.setup_seconds if emu else 0.0

    def c_argv(self, build, args: list[str]) -> list[str]:
        if not build.runner.is_file():
            raise UserError(f"the C runner {build.runner} does not exist: build it first")
        qemu = emulation.find_qemu()
        emulation.check_core(self.core, qemu)
        argv = [qemu, "-cpu", self.core]
        if not build.static:  # a dynamic aarch64 binary needs the cross sysroot's loader and libc
            argv += ["-L", "/usr/aarch64-linux-gnu"]
        return [*argv, str(build.runner), *args]

    def c_command(self, build) -> str:
        return f"qemu-aarch64 -cpu {self.core} " + super().c_command(build)

    def script_argv(self, args, progress):
        emu = self.emulator(progress)
        emulation.check_core(self.core, emu.qemu)
        argv, env = emu.command(self.core, args)
        return argv, env, f"qemu-aarch64 -cpu {self.core} (onnxruntime {emu.onnxruntime} aarch64)"


class QemuSystem(Platform):
    """A Cortex-M board emulated by qemu-system-arm (targets/boards.py), running the C runtime
    as bare-metal firmware (targets/mcu_target.py). Its latency is not the device's; its flash
    and RAM are the firmware image's own, and gated."""

    mode = "emulated"
    indicative = False
    c_program = "firmware"
    static = True

    def __init__(self, isa: str, board: boards.Board, stack_bytes: int):
        super().__init__(isa)
        self.board, self.stack_bytes = board, stack_bytes
        self.latency_note = (f"emulated (qemu-system-arm {board.machine}): latency is not "
                             "indicative of the device")

    @classmethod
    def serves(cls, profile: Profile) -> bool:
        return profile.mcu is not None

    @classmethod
    def from_profile(cls, profile: Profile, shared: dict) -> "QemuSystem":
        return cls(profile.isa, boards.get(profile.mcu.board), profile.mcu.stack_bytes)

    def tools(self) -> list[tools.Tool]:
        return [tools.QEMU_SYSTEM]

    def compiler(self) -> tools.Tool | None:
        return tools.MCU_CC

    def max_inputs(self, profile: Profile) -> int | None:
        return profile.emulation.max_inputs if profile.emulation else None

    def doctor_notes(self, runtime) -> dict:
        return {"note": f"emulated board ({self.board.machine}, {self.board.cpu}): parity, "
                        "flash and RAM are real, latency is not indicative"}

    def check_c_build(self) -> None:
        mcu_build.find_tools()

    def build_c(self, src, out, profile):
        raise UserError(f"a {self.board.cpu} board runs firmware (targets/mcu_target.py), not "
                        "the C runner")

    def c_argv(self, build, args):
        raise UserError(f"a {self.board.cpu} board runs firmware, not the C runner")


class Ssh(Platform):
    """A board over SSH. Each model's runs share one folder there (`mktemp -d`), removed when
    they end; the board's ISA is checked against the profile's before anything is copied."""

    mode = "remote"
    static = True  # the board's libc may be older than this host's

    def __init__(self, isa: str, board: Board, python: str = "python3",
                 timeout_s: int = 900):
        super().__init__(isa)
        self.board, self.python, self.timeout_s = board, python, timeout_s
        self.folder: str | None = None
        self.staged: dict[Path, str] = {}

    @classmethod
    def serves(cls, profile: Profile) -> bool:
        return profile.remote is not None

    @classmethod
    def from_profile(cls, profile: Profile, shared: dict) -> "Ssh":
        r = profile.remote
        return cls(profile.isa, Board(r.host, r.ssh_config, r.connect_timeout_s), r.python,
                   r.timeout_s)

    def tools(self) -> list[tools.Tool]:
        return [tools.SSH]

    @contextmanager
    def session(self):
        isa = self.board.isa()
        if isa != self.isa:
            raise UserError(f"board {self.board.destination} is {isa}, the target is built for "
                            f"{self.isa}: choose a {isa} target profile")
        with self.board.folder() as folder:
            self.folder, self.staged = folder, {}
            try:
                yield self
            finally:
                self.folder, self.staged = None, {}

    def _remote(self, name: str) -> str:
        if self.folder is None:
            raise RuntimeError("Ssh platform used outside its session()")
        return f"{self.folder}/{name}"

    def call(self, argv, what, *, input=None, text=False, env=None):
        data = input.encode() if isinstance(input, str) else input
        p = self.board.call(argv, f"running {what}", input=data, timeout=self.timeout_s)
        if text:
            p = subprocess.CompletedProcess(p.args, p.returncode,
                                            p.stdout.decode(errors="replace"),
                                            p.stderr.decode(errors="replace"))
        return p

    def c_argv(self, build, args):
        local = Path(build.runner)
        if local not in self.staged:
            if not local.is_file():
                raise UserError(f"the C runner {local} does not exist: build it first")
            path = self._remote(f"runner{len(self.staged)}")
            self.board.put(local.read_bytes(), path, "the C runner")
            self.board.run(["chmod", "700", path], "making the C runner executable")
            self.staged[local] = path
        return self.board.argv([self.staged[local], *args])

    def c_command(self, build):
        return f"ssh {self.board.destination} " + super().c_command(build)

    def run_script(self, script, job_dir, files, job, what, progress, needs=()):
        b = self.board
        if needs:
            self.probe_python(needs)
        names = {k: f"{k}{Path(v).suffix}" for k, v in files.items()}
        progress(f"{what}: copying {', '.join(Path(v).name for v in files.values())} and the "
                 f"inputs to {b.destination}")
        for key, path in files.items():
            b.put(Path(path).read_bytes(), self._remote(names[key]), Path(path).name)
        for f in sorted(job_dir.iterdir()):
            b.put(f.read_bytes(), self._remote(f.name), f.name)
        b.put(script.read_bytes(), self._remote(script.name), script.name)
        b.put(json.dumps({**job, **{k: self._remote(n) for k, n in names.items()}}).encode(),
              self._remote("job.json"), "job.json")
        p = self.call(b.argv([self.python, self._remote(script.name), self.folder]), what,
                      text=True)
        for name in ("result.json", "outputs.npy"):  # whatever the runner left
            got = b.call(b.argv(["cat", self._remote(name)]), f"copying {name} back")
            if got.returncode == 0:
                (job_dir / name).write_bytes(got.stdout)
        return p, f"ssh {b.destination} {self.python}"

    def probe_python(self, modules: tuple[str, ...]) -> str:
        """The board's Python version, once it imports `modules`; a UserError saying what to
        install when it does not."""
        b = self.board
        code = f"import platform, {', '.join(modules)}; print(platform.python_version())"
        p = b.call(b.argv([self.python, "-c", code]), f"checking {self.python}")
        if p.returncode != 0:
            raise UserError(f"board {b.destination}: {self.python} cannot import "
                            f"{' and '.join(modules)} ({last_line(p.stderr)}): install them there "
                            f"(pip install {' '.join(modules)}) or name another Python with "
                            "--remote-python")
        return p.stdout.decode(errors="replace").strip()

