"""edgeprune doctor: what this host can do, before a run fails halfway for want of a tool.

Torch-free at import, and it imports no optional framework at all (versions come from package
metadata: Sinabs pulls `samna`, whose import runs pip). The targets' tools are looked up with
targets.tools, the same lookup the runtime and the tests' skip markers use.
"""
from __future__ import annotations

import os
import platform
from importlib import metadata

from edgeprune import data_sources
from edgeprune.errors import UserError
from targets import profiles, registry, tools

from . import render
from .options import JsonOpt

CORE = ("torch", "onnxruntime", "onnx", "norse")
FRAMEWORKS = ("snntorch", "spikingjelly", "sinabs", "rockpool", "nir", "nirtorch")


def doctor(as_json: bool = JsonOpt):
    """Check this host: ISA and cores, Python and package versions, the optional SNN
    frameworks, which target profiles run here (and the package to install for the others),
    which built-in datasets are installed, and whether a GPU is visible."""
    report = check()
    render.emit(as_json, report, None, _lines(report))


def check() -> dict:
    return {"host": {"isa": tools.host_isa(), "cores": os.cpu_count(),
                     "usable_cores": len(os.sched_getaffinity(0))
                     if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                     "system": f"{platform.system()} {platform.release()}"},
            "python": platform.python_version(),
            "packages": {n: _version(n) for n in CORE},
            "frameworks": {n: _version(n) for n in FRAMEWORKS},
            "gpu": _gpu(),
            "targets": [_target(n) for n in profiles.builtin_names()],
            "datasets": data_sources.builtin()}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _gpu() -> dict:
    try:
        import torch
    except ImportError:
        return {"visible": None, "detail": "torch is not installed: cannot tell"}
    if not torch.cuda.is_available():
        return {"visible": False, "detail": "torch.cuda.is_available() is False"}
    return {"visible": True, "detail": ", ".join(torch.cuda.get_device_name(i)
                                                 for i in range(torch.cuda.device_count()))}


def _target(name: str) -> dict:
    p = profiles.load(name)
    rt = registry.runtime_of(p)
    try:
        pf = registry.platform_for(p)
    except UserError:  # no platform on this host runs it
        pf = None
    entry = {"name": name, "runtime": rt.name, "isa": p.isa, "mode": pf and pf.mode,
             "runnable": False, "missing": [], "install": None, "note": ""}
    if pf is None:
        entry["note"] = f"needs a {p.isa} machine"
        return entry
    missing = [t for t in (*rt.tools(pf), *pf.tools()) if t.find() is None]
    entry["missing"] = [{"tool": t.label, "looked_for": list(t.names), "package": t.package}
                        for t in missing]
    install = [f"apt-get install {' '.join(t.package for t in missing)}"] if missing else []
    install += [f"pip install {pkg}" for pkg in rt.packages if _version(pkg) is None]
    entry["install"] = "; ".join(install) or None
    entry["runnable"] = not install
    entry.update(pf.doctor_notes(rt))
    return entry


def _lines(r: dict) -> list[str]:
    h = r["host"]

    def versions(d: dict) -> str:
        return ", ".join(f"{k} {v or 'not installed'}" for k, v in d.items())

    gpu = r["gpu"]
    lines = [f"host: {h['isa']}, {h['cores']} cores ({h['usable_cores']} usable), {h['system']}",
             f"python {r['python']}; {versions(r['packages'])}",
             f"frameworks: {versions(r['frameworks'])}",
             "gpu: " + {True: "visible", False: "none visible", None: "unknown"}[gpu["visible"]]
             + f" ({gpu['detail']})", "", "targets:"]
    for t in r["targets"]:
        how = f"runs here ({t['mode']})" if t["runnable"] else "NOT runnable"
        lines.append(f"  {t['name']:<20} {t['runtime']:<12} {how}")
        lines += [f"      {x}" for x in (t["install"] and f"install: {t['install']}",
                                          t["note"]) if x]
    lines += ["", "datasets:"]
    for d in r["datasets"]:
        state = {True: "found", False: "NOT found", None: "given by path"}[d["found"]]
        lines.append(f"  {d['name']:<20} {state}")
        lines.append(f"      looked in: {d['where']}" if d["found"] is not None
                     else f"      {d['where']}")
        if not d["found"]:
            lines.append(f"      {'use' if d['found'] is None else 'install'}: {d['install']}")
    return lines
