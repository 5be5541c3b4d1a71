"""The target registry: a target is a Runtime (targets/runtimes.py: what executes the model)
on a Platform (targets/platforms.py: where it executes and how code is built for there), and a
profile (targets/profiles/*.toml) names one of each: its `runtime.kind` a runtime here, its
other fields the platform (a [remote] table: a board over SSH; else its `isa` against this host:
native, or aarch64 under QEMU user mode on x86-64). Everything that depends on the kind of a
target asks here; nothing else branches on it.

Adding a target:
  - a new device of a known kind: only a profile .toml in targets/profiles/;
  - a new runtime: a Runtime subclass in runtimes.py and its entry in RUNTIMES;
  - a new place to run (a QEMU system board, a device farm): a Platform subclass (in
    platforms.py or a module of its own) and its entry in PLATFORMS, before the ones it must
    win over (the first whose serves(profile) is true is chosen). It says how code is built for
    it (compiler(), check_c_build(), build_c()), how its programs run (c_argv(), call(),
    run_script()), its timing plan and whether its latency is the device's (indicative). Any
    profile fields it reads go in profiles.py, as an optional section listed in
    OPTIONAL_SECTIONS and UNSET_OMITTED, so that existing profiles keep their artifact ids.
"""
from __future__ import annotations

from edgeprune.errors import UserError

from . import platforms, runtimes, tools
from .profiles import Profile

RUNTIMES: dict[str, runtimes.Runtime] = {r.name: r for r in (runtimes.OnnxRuntime(),
                                                              runtimes.CRuntime())}
# First match wins: a remote board over anything local; a microcontroller names its board.
PLATFORMS: tuple[type[platforms.Platform], ...] = (platforms.Ssh, platforms.QemuSystem,
                                                   platforms.Native, platforms.QemuUser)


def runtime_of(profile: Profile) -> runtimes.Runtime:
    return RUNTIMES[profile.runtime.kind]  # a Profile refuses an unknown kind when made


def platform_for(profile: Profile, shared: dict | None = None) -> platforms.Platform:
    """The platform that runs `profile` from this host; a UserError when none can.
    `shared`: one dict per validation, where platforms keep what they set up once."""
    for cls in PLATFORMS:
        if cls.serves(profile):
            return cls.from_profile(profile, {} if shared is None else shared)
    raise UserError(f"target {profile.name} ({profile.isa}) cannot run on this "
                    f"{tools.host_isa()} host: validate it on a {profile.isa} machine, or on "
                    "a board over SSH (--remote)")


def tools_needed(profile: Profile) -> list[tools.Tool]:
    """The tools this host needs to run `profile` (UserError when no platform runs it)."""
    pf = platform_for(profile)
    return [*runtime_of(profile).tools(pf), *pf.tools()]


def check_tools(profile: Profile) -> None:
    """Refuse, before any work, a target whose tools are not all installed here (one line
    naming the package)."""
    pf = platform_for(profile)
    runtime_of(profile).check_host(pf)
    pf.check_host()
