"""Release bundles: `package` turns a validated run into a .tar.gz (ONNX models, optional .ort,
validation reports, reference inputs/outputs, MODEL_CARD.md, manifest with lineage and sha256
of every file); `verify` checks one on a device with only numpy and onnxruntime.

Trust. The checksums prove a bundle is intact, not where it came from: anyone can recompute
them. `package --sign KEY` signs the bundle's manifest.json with OpenSSH (targets/signing.py)
and stores the signature as the member `manifest.json.sig`, right after the manifest. The
manifest lists the sha256 and size of every other member, so the signature covers the whole
bundle: change any member and either its sha256 no longer matches, or the manifest was edited
(re-hashed) and the signature no longer fits it. `verify --trust KEY.pub` checks that signature
before it reads anything else. Without a verified signature, verify executes no native code
from the bundle: ONNX models run in ONNX Runtime (no bundle code), and a C target's bundled
runner is replaced by one compiled here from the bundled sources on `--rebuild-c`, or the
target is refused (when named) or left out (when chosen by default), with a line saying how to
proceed.

Package trusts no edited manifest: each validation's pass or fail is re-derived from the gates
in its stored report.json (whose sha256 its manifest lists), and file and target names from
manifests are checked as plain names (edgeprune/names.py) before they are used as paths."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from edgeprune import __version__
from edgeprune.artifacts import MANIFEST, Artifact, Job, Store, open_artifact
from edgeprune.bounded_read import Budget, npz_arrays, shown
from edgeprune.config import PackageConfig
from edgeprune import names
from edgeprune.errors import GateFailed, UserError
from edgeprune.hashing import bytes_sha256, file_sha256, is_file_table

from . import archive, modelcard, profiles as profiles_mod, registry, scratch, signing, ssh, tools
from .runtimes import INT8_FILE, ORT_PLATFORM
from .validate_stage import REFERENCE_BYTES
from .validation import FAIL, budget_gates, latency_of, memory_of, parity, parity_ok

# /2: the manifest (and its signature) lead the archive, so verify can bound what it reads;
# the schema is part of the package artifact's id, so no cached /1 bundle is handed out.
SCHEMA = "edgeprune.bundle/2"
STAGE = "package"
SELF_KEY = "self_sha256"
HEAD = archive.LEADING  # the manifest and its signature lead the bundle, read before any other
SIGNATURE = HEAD[1]
HEAD_CAP = {MANIFEST: 8 * 1024 ** 2, SIGNATURE: signing.MAX_SIGNATURE}
ZERO = "0" * 64
MODEL_SUFFIXES = (".onnx", ".nir")
# the export files the runtimes run besides the models (the C sources): shipped under c/
RUNTIME_FILES = frozenset(f for r in registry.RUNTIMES.values() for f in r.export_files)
# the ONNX Runtime profile verify uses for a bundle with no target this host runs
DEFAULT_PROFILE = {"x86_64": "x86_64", "aarch64": "arm64-cortex-a72"}
Progress = Callable[[str], None]
UNTRUSTED_C = ("verify runs no native code from a bundle it cannot trust: pass --trust KEY.pub "
               "(the packager's public key, for a bundle made with `package --sign`) or "
               "--rebuild-c (compile the bundle's C sources with this host's compiler)")


# -- package -----------------------------------------------------------------------------------

def _runtime(entry: dict):
    """The runtime a validation report's target entry ran (reports before the C runtime name
    none: ONNX Runtime); a UserError for a name this edgeprune does not know."""
    name = entry.get("runtime", "onnxruntime")
    if name not in registry.RUNTIMES:
        raise UserError(f"a validation report names the runtime {shown(str(name))}, which this "
                        "edgeprune does not know")
    return registry.RUNTIMES[name]


def _verdict(art: Artifact) -> dict:
    """The validation's report.json (sha256 checked), after checking that what its manifest
    says about pass or fail is what the report's gates decided; a manifest edited to say
    otherwise is refused."""
    try:
        report = json.loads(art.file("report.json").read_text())
        entries = report["targets"]
        passed = [all(g["status"] != FAIL for g in e["gates"]) for e in entries]
        claims = [bool(e["passed"]) for e in entries]
        claimed = bool(report.get("passed"))
        for e in entries:
            names.plain_name(e.get("target"), f"validate artifact {art.path}: target name")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"validate artifact {art.path}: report.json is not a validation report "
                        f"({e.__class__.__name__})") from None
    derived = bool(entries) and all(passed)
    if claims != passed or claimed != derived or \
            art.metrics.get("passed") is not derived:
        raise UserError(f"validate artifact {art.path}: its manifest or report says "
                        f"passed={art.metrics.get('passed')!r}, but the gates in its report.json "
                        f"say {'pass' if derived else 'fail'}: edited by hand? Validate again")
    return report


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
    passing = [a for a in vals if _verdict(a)["passed"]]
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
    with scratch.folder("ort") as d:
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
    if cfg.sign:  # the signer is part of the id; an unsigned bundle's id has no key in it
        config["signed_by"] = signing.key_fingerprint(Path(cfg.sign))

    def compute(job: Job) -> dict:
        progress(f"package: collecting export {export.id} and {len(vals)} validation(s)")
        files: dict[str, bytes] = {}
        reports = []
        for v in vals:
            report = _verdict(v)
            files[f"reports/validate-{v.id}/report.json"] = v.file("report.json").read_bytes()
            files[f"reports/validate-{v.id}/report.md"] = v.file("report.md").read_bytes()
            reports.append({"id": v.id, "report": report})
        entries = [e for r in reports for e in r["report"]["targets"]]
        # int8 ships only where every ONNX Runtime validation kept it
        ort = [e for e in entries if _runtime(e).runs_onnx]
        int8_ok = bool(ort) and all((e.get("int8") or {}).get("kept") for e in ort)
        for name in sorted(export.manifest["files"]):
            names.plain_name(name, f"export artifact {export.path}: file")
            if name == INT8_FILE and not int8_ok:
                progress("package: model.int8.onnx left out (not kept by every validation)")
                continue
            if name.endswith(MODEL_SUFFIXES):
                files[name] = export.file(name).read_bytes()  # sha256 checked on read
            elif name in RUNTIME_FILES:
                files[f"c/{name}"] = export.file(name).read_bytes()
        if "model.onnx" not in files:
            raise UserError(f"export artifact {export.id} has no model.onnx")
        for r, v in ((r, v) for r in reports for v in vals if v.id == r["id"]):
            for e in r["report"]["targets"]:  # the binaries each validation built and ran
                if e["passed"]:
                    for f in _runtime(e).binaries:
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
            for isa in sorted({t["isa"] for t in targets
                               if registry.RUNTIMES[t["runtime"]].runs_onnx}):
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
        bad = [f"{shown(n)} ({why})" for n in sorted(files)
               for why in [names.path_problem(f"{name}/{n}")] if why]
        if bad:
            raise UserError(f"cannot package {val.path}: bundle member names that verify would "
                            f"refuse: {archive.summary(bad)}")
        files[MANIFEST] = _manifest_bytes(manifest)
        if cfg.sign:
            progress(f"package: signing {MANIFEST} with {cfg.sign} ({config['signed_by']})")
            files[SIGNATURE] = signing.sign(files[MANIFEST], Path(cfg.sign))
        bundle_name = f"{name}.tar.gz"
        blob = archive.pack(name, files)
        progress(f"package: writing {bundle_name}")
        (job.dir / bundle_name).write_bytes(blob)
        return {"bundle": bundle_name, "files": len(files), "bytes": len(blob),
                "validated_targets": sorted({t["target"] for t in targets}),
                "lineage": " → ".join(f"{e['stage']}-{e['id']}" for e in lin), "ort": cfg.ort,
                "signed_by": config.get("signed_by")}

    return Store(out_dir or run_dir).run(STAGE, config, [val.id], compute)


# -- verify ------------------------------------------------------------------------------------

def _check_manifest(head: dict[str, bytes],
                    trust: Path | None) -> tuple[dict | None, str | None, list[str]]:
    """(manifest, signer, problems) of a bundle's leading members: the signature first (with
    `trust`), then the manifest's own sha256, schema and tables."""
    raw = head[MANIFEST]
    by = None
    if trust is not None:
        if SIGNATURE not in head:
            return None, None, [f"it is not signed (no {SIGNATURE}), and --trust asks for a "
                                "signature"]
        try:
            by = signing.verify(raw, head[SIGNATURE], trust, MANIFEST)
        except GateFailed as e:
            return None, None, [str(e)]
    try:
        manifest = json.loads(raw)
        claimed = manifest[SELF_KEY]
    except (ValueError, KeyError, TypeError, RecursionError):
        return None, by, [f"{MANIFEST} is damaged (not the JSON manifest it should be)"]
    text = raw.decode("utf-8", errors="replace")
    if not isinstance(claimed, str) or text.count(claimed) != 1 or \
            bytes_sha256(text.replace(claimed, ZERO, 1).encode()) != claimed:
        return None, by, [f"{MANIFEST} does not match its own sha256 (modified or damaged)"]
    if manifest.get("schema") != SCHEMA:
        return None, by, [f"{MANIFEST} is not an {SCHEMA} manifest"]
    listed = manifest.get("files", {})
    targets = manifest.get("targets", [])
    if not is_file_table(listed) or not isinstance(targets, list) or not all(
            isinstance(t, dict) and isinstance(t.get("isa"), str)
            and names.problem(t.get("target")) is None and isinstance(t.get("profile"), dict)
            for t in targets):
        return None, by, [f"{MANIFEST} is damaged (its files or targets table is malformed)"]
    return manifest, by, []


def _read(bundle: Path, dest: Path, trust: Path | None) -> tuple[dict, str | None, set[str]]:
    """Extract `bundle` into `dest` within the bounds of archive.read, check the signature
    (with `trust`), the manifest and every member's sha256: (manifest, signer, member names);
    GateFailed naming the first few problems."""
    checked: dict = {}

    def declare(head: dict[str, bytes]) -> dict[str, int] | None:
        manifest, by, problems = _check_manifest(head, trust)
        checked.update(manifest=manifest, by=by, problems=problems)
        return None if manifest is None else {n: e["bytes"] for n, e in
                                              manifest["files"].items()}

    contents = archive.read(bundle, dest, HEAD, HEAD_CAP, declare)
    manifest = checked.get("manifest")
    problems = checked.get("problems", []) + contents.problems
    if not problems:
        problems = [f"{n} does not match its sha256 in {MANIFEST}"
                    for n, path in sorted(contents.files.items())
                    if file_sha256(path) != manifest["files"][n]["sha256"]]
    if problems:
        raise GateFailed(f"bundle {bundle.name} failed verification: "
                         + archive.summary(problems))
    return manifest, checked["by"], contents.names


def _profiles_for(manifest: dict, c_ok: bool, skipped: list[dict],
                  remote: tuple = (None, None, None)) -> list:
    """Every validated target that runs here without setting anything up: natively, and a
    self-contained runtime (the C runner) under QEMU when the emulator is installed (ONNX
    Runtime under QEMU only when named: it needs the emulated Python environment). With a
    board (`remote`: host, ssh config, python), the targets of the board's ISA, run there.
    Targets that run native code from the bundle only with `c_ok` (a trusted bundle, or
    --rebuild-c); the others go to `skipped`."""
    host, ssh_config, _python = remote
    board_isa = ssh.Board(host, ssh_config or "").isa() if host else None
    chosen, seen = [], set()
    for t in manifest.get("targets", []):
        # where it was validated is not part of the target: it runs here (or on the board)
        raw = {k: v for k, v in t["profile"].items() if v is not None and k != "remote"}
        prof = profiles_mod.from_dict(raw, t["target"], "bundle manifest").with_remote(*remote)
        if t["target"] in seen or not _runs_by_default(prof, board_isa):
            continue
        seen.add(t["target"])
        if registry.runtime_of(prof).native_code and not c_ok:
            skipped.append({"target": t["target"], "reason": UNTRUSTED_C})
            continue
        chosen.append(prof)
    if not chosen:
        isa = board_isa or tools.host_isa()
        if isa not in DEFAULT_PROFILE:
            raise UserError(f"the bundle has no target for {isa}, and edgeprune has no "
                            f"{isa} profile: name one with --target")
        chosen = [profiles_mod.load(DEFAULT_PROFILE[isa]).with_remote(*remote)]
    return chosen


def _runs_by_default(prof, board_isa: str | None) -> bool:
    if board_isa is not None:
        return prof.isa == board_isa
    try:
        pf = registry.platform_for(prof)
    except UserError:  # no platform here runs it
        return False
    return pf.mode == "native" or (registry.runtime_of(prof).self_contained
                                   and all(t.find() for t in pf.tools()))


def _reference(path: Path, manifest: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    """reference.npz's inputs, logits and the int8 outputs of the manifest's targets (only
    those members are read, each within the reference budget before it is inflated)."""
    int8 = [f"int8:{t['target']}" for t in manifest["targets"]]
    z = npz_arrays(path, "bundle file", ("inputs", "logits", *int8),
                   Budget("a reference file", REFERENCE_BYTES))
    if "inputs" not in z or "logits" not in z:
        raise UserError(f"{path.name} in the bundle lacks 'inputs' or 'logits'")
    return z["inputs"], z["logits"], {k.split(":", 1)[1]: z[k] for k in int8 if k in z}


def verify(bundle: Path, target: str | None = None, *, trust: Path | None = None,
           rebuild_c: bool = False, latency_budget_ms: float | None = None,
           remote: str | None = None, ssh_config: str | None = None,
           remote_python: str | None = None, progress: Progress = lambda m: None) -> dict:
    """Bounded extraction, the signature (with `trust`), every checksum, then the reference
    inputs re-run on each target and the model timed there with the profile's latency plan;
    GateFailed naming the file on any mismatch, and with both numbers on a missed latency or
    memory budget (the bundle's recorded profiles' budgets, or those of the `target` profiles,
    or `latency_budget_ms`; not gated under emulation). With `remote` (USER@HOST[:PORT] or an
    ssh alias; `ssh_config`: ssh -F; `remote_python`: the board's Python), the targets run on
    that board over SSH, where the budgets apply. Runtimes that run native code from the bundle
    (the C runner) run it only when its signature was verified; with `rebuild_c`, a runner
    compiled here from the bundle's C sources; else they are refused (named) or left out."""
    bundle = Path(bundle)
    if not bundle.is_file():
        raise UserError(f"bundle {bundle} does not exist")
    if trust is not None:
        signing.trusted_keys(trust)  # a bad key file is bad input, found before any work
    if latency_budget_ms is not None and not (math.isfinite(latency_budget_ms)
                                              and latency_budget_ms > 0):
        raise UserError(f"--latency-budget-ms must be a positive number, got {latency_budget_ms}")
    board = (remote, ssh_config, remote_python)
    named = ([p.with_remote(*board) for p in profiles_mod.load_many(target)] if target
             else None)
    for p in named or ():
        if registry.runtime_of(p).native_code and trust is None and not rebuild_c:
            raise UserError(f"target {p.name}: {UNTRUSTED_C}")
    with scratch.folder("verify") as root:
        manifest, signer, members = _read(bundle, root, trust)
        progress(f"verify: {len(members)} files match their sha256"
                 + (f"; signed by trusted key {signer}" if signer else
                    "; signed, not checked (give --trust KEY.pub)" if SIGNATURE in members
                    else ""))
        skipped: list[dict] = []
        profs = named or _profiles_for(manifest, signer is not None or rebuild_c, skipped,
                                       board)
        if latency_budget_ms is not None:
            profs = [p.with_latency_budget(latency_budget_ms) for p in profs]
        for s in skipped:
            progress(f"verify: target {s['target']} left out: {s['reason']}")
        inputs, expected, int8_expected = _reference(root / "reference.npz", manifest)
        if inputs.dtype.kind != "f" or expected.ndim != 2 or len(expected) != (
                inputs.shape[1] if inputs.ndim == 5 else len(inputs)):
            raise UserError(f"bundle {bundle.name}: reference.npz holds no float inputs with "
                            "one row of logits each")
        runs, failed = [], []
        shared: dict = {}
        for prof in profs:
            rt, pf = registry.runtime_of(prof), registry.platform_for(prof, shared)
            # The shipped model (model.onnx, or the C runner) is timed with the profile's plan;
            # the other files (.ort, int8) get one untimed pass, for their outputs only.
            quick = replace(prof, latency=replace(prof.latency, warmup=0, runs=1),
                            emulation=(replace(prof.emulation, warmup=0, runs=1)
                                       if prof.emulation else None))
            try:
                models = rt.bundled(prof, members, rebuild_c)
            except UserError as e:
                failed.append(str(e))
                continue
            for i, name in enumerate(models):
                plan = prof if i == 0 else quick
                run = rt.run_bundled(root, name, plan, pf, inputs, rebuild_c, progress)
                want = expected
                if name == INT8_FILE:  # what the int8 model gave when it was validated
                    want = int8_expected.get(prof.name, next(iter(int8_expected.values()),
                                                             None))
                if want is None or len(want) != len(expected):
                    raise UserError(f"bundle {bundle.name}: reference.npz holds no validated "
                                    f"outputs of {name}")
                par = parity(run.outputs, want, prof.parity.max_abs_logit_diff)
                ok = parity_ok(par, prof.parity)
                entry = {"target": prof.name, "file": name, "mode": run.mode,
                         "onnxruntime": run.result["onnxruntime"],
                         "machine": run.result["machine"], "inputs": len(expected), **par,
                         "latency": None, "memory": None, "gates": []}
                if not ok:
                    failed.append(f"{name} on {prof.name}: outputs differ from reference.npz "
                                  f"(agreement {par['agreement']:.2%}, max |Δlogit| "
                                  f"{par['max_abs_diff']:.3g} > {prof.parity.max_abs_logit_diff:g})")
                if i == 0:
                    entry["latency"], entry["memory"] = latency_of(prof, run), memory_of(prof, run)
                    entry["gates"] = budget_gates(prof, entry["latency"], entry["memory"])
                    missed = [g for g in entry["gates"] if g["status"] == FAIL]
                    failed += [f"{g['gate']} {g['detail']} on {prof.name} ({name})"
                               for g in missed]
                    ok = ok and not missed
                runs.append({**entry, "passed": ok})
    result = {"bundle": str(bundle), "name": manifest["name"], "files_checked": len(members),
              "signed_by": signer, "runs": runs, "skipped": skipped, "passed": not failed}
    if failed:
        e = GateFailed(f"bundle {bundle.name} failed verification: " + archive.summary(failed))
        e.result = result
        raise e
    return result
