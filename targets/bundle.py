"""Release bundles: `package` turns a validated run into a .tar.gz (ONNX models, optional .ort,
validation reports, reference inputs/outputs, MODEL_CARD.md, manifest with lineage and sha256
of every file); `verify` checks one on a device with only numpy and onnxruntime."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from edgeprune import __version__
from edgeprune.artifacts import MANIFEST, Artifact, Job, Store, open_artifact
from edgeprune.config import PackageConfig
from edgeprune.errors import GateFailed, UserError
from edgeprune.hashing import bytes_sha256, is_file_table

from . import archive, modelcard, profiles as profiles_mod, runtime
from .validation import parity, parity_ok

SCHEMA = "edgeprune.bundle/1"
STAGE = "package"
SELF_KEY = "self_sha256"
ZERO = "0" * 64
MODEL_SUFFIXES = (".onnx", ".nir")
INT8_FILE = "model.int8.onnx"
C_SOURCES = ("model.h", "model.c", "model_weights.c", "runner.c")
ORT_PLATFORM = {"x86_64": "amd64", "aarch64": "arm"}
Progress = Callable[[str], None]


# -- package -----------------------------------------------------------------------------------

def _passed(art: Artifact) -> bool:
    return bool(art.metrics.get("passed"))


def resolve(source: Path) -> Artifact:
    """The validate artifact to package: given itself, a run directory (its newest passing
    validation), or an export artifact (its newest passing validation). A model whose
    validation failed a gate is not released: GateFailed."""
    source = Path(source)
    if not source.exists():
        raise UserError(f"{source} does not exist")
    if source.is_dir() and not (source / MANIFEST).exists():
        vals = [a for a in Store(source).artifacts() if a.stage == "validate"]
        what = f"run directory {source}"
    else:
        art = open_artifact(source)
        if art.stage == "validate":
            vals, what = [art], f"validate artifact {art.id}"
        else:
            vals = [a for a in Store(art.path.parent).artifacts()
                    if a.stage == "validate" and art.id in a.manifest.get("inputs", [])]
            what = f"{art.stage} artifact {art.id}"
    if not vals:
        raise UserError(f"{what} has no validation: run `edgeprune validate` on the exported "
                        "model.onnx first")
    passing = [a for a in vals if _passed(a)]
    if not passing:
        raise GateFailed(f"{what}: validation {vals[-1].id} failed its gates "
                         f"(see {vals[-1].path / 'report.md'}); a failing model is not packaged")
    return passing[-1]


def lineage(run_dir: Path, art: Artifact) -> list[dict]:
    """`art` and its ancestors through `inputs`, parents first; ids missing from the run
    directory are listed as missing rather than dropped."""
    index = {a.id: a for a in Store(run_dir).artifacts()}
    order: list[dict] = []
    seen: set[str] = set()

    def visit(aid: str) -> None:
        if aid in seen:
            return
        seen.add(aid)
        a = index.get(aid)
        if a is None:
            order.append({"id": aid, "stage": None, "missing": True})
            return
        for parent in a.manifest.get("inputs", []):
            visit(parent)
        order.append({"id": a.id, "stage": a.stage, "created": a.manifest.get("created"),
                      "inputs": a.manifest.get("inputs", []), "config": a.config,
                      "metrics": a.metrics, "env": a.manifest.get("env", {}),
                      "files": a.manifest.get("files", {})})

    visit(art.id)
    return order


def _manifest_bytes(manifest: dict) -> bytes:
    """JSON with its own sha256 inside: the hash of the file with the hash zeroed."""
    text = json.dumps({**manifest, SELF_KEY: ZERO}, indent=2, sort_keys=True, default=str) + "\n"
    return text.replace(ZERO, bytes_sha256(text.encode()), 1).encode()


def _convert_ort(onnx_bytes: bytes, platform: str) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory(prefix="edgeprune-ort-") as d:
        src = Path(d) / "model.onnx"
        src.write_bytes(onnx_bytes)
        out = Path(d) / "out"
        p = subprocess.run([sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort",
                            str(src), "--output_dir", str(out), "--optimization_style", "Fixed",
                            "--target_platform", platform],
                           capture_output=True, text=True, timeout=600)
        if p.returncode != 0 or not (out / "model.ort").exists():
            tail = (p.stderr or p.stdout).strip().splitlines()
            raise UserError(f"ORT format conversion failed ({tail[-1][:200] if tail else 'no output'});"
                            " package without --ort")
        return {f"model.{platform}.ort": (out / "model.ort").read_bytes(),
                f"model.{platform}.required_operators.config":
                    (out / "model.required_operators.config").read_bytes()}


def package(source: Path, cfg: PackageConfig = PackageConfig(), out_dir: Path | None = None,
            progress: Progress = lambda m: None) -> tuple[Artifact, bool]:
    """Build (or find) the package artifact holding the bundle of `source`'s validated model."""
    val = resolve(source)
    run_dir = val.path.parent
    lin = lineage(run_dir, val)
    by_id = {e["id"]: e for e in lin}
    exports = [i for i in val.manifest["inputs"] if by_id.get(i, {}).get("stage") == "export"]
    if not exports:
        raise UserError(f"validate artifact {val.id} was run on a loose .onnx file, not an "
                        "export artifact: validate the exported model.onnx to package it")
    export = open_artifact(run_dir / f"export-{exports[0]}")
    vals = [a for a in Store(run_dir).artifacts()
            if a.stage == "validate" and export.id in a.manifest.get("inputs", [])]
    if val.id not in [v.id for v in vals]:
        vals.append(val)
    config = {"validate": val.id, "validations": sorted(v.id for v in vals), "ort": cfg.ort,
              "schema": SCHEMA}

    def compute(job: Job) -> dict:
        progress(f"package: collecting export {export.id} and {len(vals)} validation(s)")
        files: dict[str, bytes] = {}
        reports = []
        for v in vals:
            report = json.loads(v.file("report.json").read_text())
            files[f"reports/validate-{v.id}/report.json"] = v.file("report.json").read_bytes()
            files[f"reports/validate-{v.id}/report.md"] = v.file("report.md").read_bytes()
            reports.append({"id": v.id, "report": report})
        entries = [e for r in reports for e in r["report"]["targets"]]
        # int8 ships only where every ONNX Runtime validation kept it
        ort = [e for e in entries if e.get("runtime", "onnxruntime") == "onnxruntime"]
        int8_ok = bool(ort) and all((e.get("int8") or {}).get("kept") for e in ort)
        for name in sorted(export.manifest["files"]):
            if name == INT8_FILE and not int8_ok:
                progress("package: model.int8.onnx left out (not kept by every validation)")
                continue
            if name.endswith(MODEL_SUFFIXES):
                files[name] = export.file(name).read_bytes()  # sha256 checked on read
            elif name in C_SOURCES:
                files[f"c/{name}"] = export.file(name).read_bytes()
        if "model.onnx" not in files:
            raise UserError(f"export artifact {export.id} has no model.onnx")
        for r, v in ((r, v) for r in reports for v in vals if v.id == r["id"]):
            for e in r["report"]["targets"]:  # the binaries each C validation built and ran
                if e.get("runtime") == "c" and e["passed"]:
                    for f in ("runner", "libmodel.a"):
                        if f"{e['target']}.{f}" in v.manifest["files"]:
                            files[f"c/{e['target']}/{f}"] = \
                                v.file(f"{e['target']}.{f}").read_bytes()
        files["reference.npz"] = val.file("reference.npz").read_bytes()
        targets = [{"target": e["target"], "isa": e["isa"], "mode": e["mode"],
                    "runtime": e.get("runtime", "onnxruntime"),
                    "onnxruntime": e["onnxruntime"], "passed": e["passed"],
                    "validate_id": r["id"], "profile": e["profile"]}
                   for r in reports for e in r["report"]["targets"]]
        if cfg.ort:
            for isa in sorted({t["isa"] for t in targets if t["runtime"] == "onnxruntime"}):
                progress(f"package: converting to ORT format for {ORT_PLATFORM[isa]}")
                files.update(_convert_ort(files["model.onnx"], ORT_PLATFORM[isa]))
        meta = json.loads(files[f"reports/validate-{val.id}/report.json"])["model"]["metadata"]
        name = f"edgeprune-{export.id}"
        files["MODEL_CARD.md"] = modelcard.render(name, lin, meta, reports,
                                                  sorted([*files, "MODEL_CARD.md"])).encode()
        with np.load(val.file("reference.npz")) as z:
            ref_info = {"file": "reference.npz", "source": str(z["source"]),
                        "inputs": int(z["logits"].shape[0])}
        manifest = {"schema": SCHEMA, "name": name, "created": time.strftime(
                        "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "edgeprune": __version__,
                    "model": {"file": "model.onnx", "export": export.id, "metadata": meta},
                    "validate": val.id, "targets": targets, "reference": ref_info,
                    "lineage": lin,
                    "files": {n: {"sha256": bytes_sha256(b), "bytes": len(b)}
                              for n, b in sorted(files.items())}}
        files[MANIFEST] = _manifest_bytes(manifest)
        bundle_name = f"{name}.tar.gz"
        blob = archive.pack(name, files)
        progress(f"package: writing {bundle_name}")
        (job.dir / bundle_name).write_bytes(blob)
        return {"bundle": bundle_name, "files": len(files), "bytes": len(blob),
                "validated_targets": sorted({t["target"] for t in targets}),
                "lineage": " → ".join(f"{e['stage']}-{e['id']}" for e in lin), "ort": cfg.ort}

    return Store(out_dir or run_dir).run(STAGE, config, [val.id], compute)


# -- verify ------------------------------------------------------------------------------------

def _check_manifest(files: dict[str, bytes]) -> tuple[dict | None, list[str]]:
    raw = files.get(MANIFEST)
    if raw is None:
        return None, [f"{MANIFEST} is missing"]
    try:
        manifest = json.loads(raw)
        claimed = manifest[SELF_KEY]
    except (ValueError, KeyError, TypeError):
        return None, [f"{MANIFEST} is damaged (not the JSON manifest it should be)"]
    text = raw.decode("utf-8", errors="replace")
    if not isinstance(claimed, str) or text.count(claimed) != 1 or \
            bytes_sha256(text.replace(claimed, ZERO, 1).encode()) != claimed:
        return None, [f"{MANIFEST} does not match its own sha256 (modified or damaged)"]
    if manifest.get("schema") != SCHEMA:
        return None, [f"{MANIFEST} is not an {SCHEMA} manifest"]
    listed = manifest.get("files", {})
    targets = manifest.get("targets", [])
    if not is_file_table(listed) or not isinstance(targets, list) or not all(
            isinstance(t, dict) and isinstance(t.get("isa"), str)
            and isinstance(t.get("target"), str) and isinstance(t.get("profile"), dict)
            for t in targets):
        return None, [f"{MANIFEST} is damaged (its files or targets table is malformed)"]
    problems = []
    for name, entry in sorted(listed.items()):
        data = files.get(name)
        if data is None:
            problems.append(f"{name} is missing")
        elif len(data) != entry["bytes"] or bytes_sha256(data) != entry["sha256"]:
            problems.append(f"{name} does not match its sha256 in {MANIFEST}")
    for name in sorted(set(files) - set(listed) - {MANIFEST}):
        problems.append(f"{name} is not listed in {MANIFEST}")
    return manifest, problems


def _profiles_for(manifest: dict, target: str | None) -> list:
    """--target's profiles, else every validated target this host runs: natively, and the C
    runtime's aarch64 runner under QEMU when qemu-aarch64-static is installed (ONNX Runtime
    under QEMU only when named: it needs the emulated Python environment)."""
    if target:
        return profiles_mod.load_many(target)
    host = runtime.host_isa()
    emulated_c = host == "x86_64" and any(shutil.which(q) for q in ("qemu-aarch64-static",
                                                                    "qemu-aarch64"))
    chosen, seen = [], set()
    for t in manifest.get("targets", []):
        c_here = t.get("runtime") == "c" and t["isa"] == "aarch64" and emulated_c
        if (t["isa"] == host or c_here) and t["target"] not in seen:
            seen.add(t["target"])
            raw = {k: v for k, v in t["profile"].items() if v is not None}
            chosen.append(profiles_mod.from_dict(raw, t["target"], "bundle manifest"))
    if not chosen:
        chosen = [profiles_mod.load("x86_64" if host == "x86_64" else "arm64-cortex-a72")]
    return chosen


def _run_c(runner: Path, prof, inputs: np.ndarray) -> runtime.TargetRun:
    """The bundle's C runner for `prof` on the reference inputs (natively or under QEMU)."""
    from . import c_build, c_run

    runner.chmod(0o755)
    native = prof.isa == runtime.host_isa()
    build = c_build.CBuild(folder=runner.parent, isa=prof.isa, native=native, sanitize=False,
                           compiler="", flags=(), runner=runner,
                           library=runner.parent / "libmodel.a", objects=(), static=not native)
    qemu_cpu = prof.emulation.qemu_cpu if prof.emulation else "cortex-a72"
    out = c_run.run(build, inputs, qemu_cpu=qemu_cpu)
    return runtime.TargetRun(out.logits, {"onnxruntime": None, "machine": prof.isa}, out.mode,
                             " ".join(out.command))


def verify(bundle: Path, target: str | None = None,
           progress: Progress = lambda m: None) -> dict:
    """Checksums first, then the reference inputs re-run on each target; GateFailed naming the
    file on any mismatch."""
    bundle = Path(bundle)
    if not bundle.is_file():
        raise UserError(f"bundle {bundle} does not exist")
    with tempfile.TemporaryDirectory(prefix="edgeprune-verify-") as d:
        files = archive.extract(bundle, Path(d))
        manifest, problems = _check_manifest(files)
        if problems:
            raise GateFailed(f"bundle {bundle.name} failed verification: " + "; ".join(problems))
        progress(f"verify: {len(files)} files match their sha256")
        profs = _profiles_for(manifest, target)
        root = Path(d)
        try:
            with np.load(root / "reference.npz", allow_pickle=False) as z:
                inputs, expected = z["inputs"], z["logits"]
                int8_expected = {k.split(":", 1)[1]: z[k] for k in z.files
                                 if k.startswith("int8:")}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise UserError(f"bundle {bundle.name}: reference.npz is unreadable ({e})") from None
        if inputs.dtype.kind != "f" or expected.ndim != 2 or len(expected) != (
                inputs.shape[1] if inputs.ndim == 5 else len(inputs)):
            raise UserError(f"bundle {bundle.name}: reference.npz holds no float inputs with "
                            "one row of logits each")
        runs, failed = [], []
        for prof in profs:
            # Only the outputs matter here: one untimed pass, no latency plan.
            quick = replace(prof, latency=replace(prof.latency, warmup=0, runs=1),
                            emulation=(replace(prof.emulation, warmup=0, runs=1,
                                               max_inputs=max(prof.emulation.max_inputs,
                                                              len(expected)))
                                       if prof.emulation else None))
            if prof.kind == "c":
                models = [f"c/{prof.name}/runner"]
                if models[0] not in files:
                    failed.append(f"target {prof.name}: the bundle has no C runner for it "
                                  "(validate and package with this target)")
                    continue
            else:
                models = ["model.onnx"] + [n for n in sorted(files)
                                           if n in (f"model.{ORT_PLATFORM[prof.isa]}.ort",
                                                    INT8_FILE)]
            for name in models:
                run = (_run_c(root / name, quick, inputs) if prof.kind == "c"
                       else runtime.run(root / name, quick, inputs, progress=progress))
                want = expected
                if name == INT8_FILE:  # what the int8 model gave when it was validated
                    want = int8_expected.get(prof.name, next(iter(int8_expected.values()),
                                                             None))
                if want is None or len(want) != len(expected):
                    raise UserError(f"bundle {bundle.name}: reference.npz holds no validated "
                                    f"outputs of {name}")
                par = parity(run.outputs, want, prof.parity.max_abs_logit_diff)
                ok = parity_ok(par, prof.parity)
                runs.append({"target": prof.name, "file": name, "mode": run.mode,
                             "onnxruntime": run.result["onnxruntime"],
                             "machine": run.result["machine"], "inputs": len(expected),
                             **par, "passed": ok})
                if not ok:
                    failed.append(f"{name} on {prof.name}: outputs differ from reference.npz "
                                  f"(agreement {par['agreement']:.2%}, max |Δlogit| "
                                  f"{par['max_abs_diff']:.3g} > {prof.parity.max_abs_logit_diff:g})")
    result = {"bundle": str(bundle), "name": manifest["name"], "files_checked": len(files),
              "runs": runs, "passed": not failed}
    if failed:
        e = GateFailed(f"bundle {bundle.name} failed verification: " + "; ".join(failed))
        e.result = result
        raise e
    return result
