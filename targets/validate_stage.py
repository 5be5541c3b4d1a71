"""The validate stage: resolve the config, derive the artifact id, reuse a stored report or run
the validation, store report.json/report.md/reference.npz, then apply the gates.

The report is written before the gates raise, so a failing run still leaves its evidence."""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from edgeprune.artifacts import Artifact, Job, MANIFEST, Store, open_artifact
from edgeprune.bounded_read import GiB, Budget, npz_arrays
from edgeprune.errors import GateFailed, UserError
from edgeprune.hashing import arrays_digest

from . import registry, report as rep
from .modelfile import ModelInfo, inspect
from .profiles import Profile
from .validation import Extras, failures, validate

STAGE = "validate"
# bump when what a validation stores changes (2: the int8 model's reference outputs, 3: the
# cost model of the ticket and the dense model)
FORMAT = 3
# What reading a reference file may cost (its members as declared): a CIFAR-10 test set as
# float32 inputs is 123 MB.
REFERENCE_BYTES = 1 * GiB


def source_artifact(path: Path) -> Artifact | None:
    """The artifact a file lives in (its sha256 checked), or None for a loose file."""
    path = Path(path)
    if not (path.parent / MANIFEST).exists():
        return None
    art = open_artifact(path.parent)
    art.file(path.name)  # refuses a file that no longer matches its manifest
    return art


def run_validate(store: Store, model: Path, profiles: list[Profile], inputs: np.ndarray,
                 labels: np.ndarray | None, *, data_name: str, reference: np.ndarray | None = None,
                 reference_source: str | None = None, extra_inputs: tuple[str, ...] = (),
                 info: ModelInfo | None = None,
                 progress: Callable[[str], None] = lambda m: None,
                 extras: Extras | None = None) -> tuple[Artifact, bool]:
    """Validate `model` (an export artifact's model.onnx, or a loose .onnx) on `profiles`.

    `inputs` are what the model takes (see modelfile.model_inputs), `reference` the logits the
    ONNX model must reproduce on them. Returns (artifact, cached); raises GateFailed, after
    storing the report, when a gate fails."""
    model = Path(model)
    source = source_artifact(model)
    info = info or inspect(model)
    config = {"format": FORMAT, "model": {"file": model.name, "sha256": info.sha256},
              "targets": [p.to_dict() for p in profiles],
              "data": {"name": data_name, "inputs": arrays_digest(inputs, labels)},
              "reference": ({"source": reference_source, "logits": arrays_digest(reference)}
                            if reference is not None else None)}
    extras = extras or Extras()
    d = extras.dense
    config["dense"] = ({"export": d.artifact, "onnx": d.onnx.sha256 if d.onnx else None}
                       if d else {"none": extras.dense_note})
    config["int8"] = ({"sha256": extras.int8.sha256, "required": extras.int8_required}
                      if extras.int8 else None)
    if any(registry.runtime_of(p).export_files for p in profiles):
        config["c_sources"] = str(extras.c_sources) if extras.c_sources else None
    if config.get("c_sources") and source:
        config["c_sources"] = "export artifact"  # the export id (an input) already fixes them
    inputs_ids = ([source.id] if source else []) + [i for i in extra_inputs
                                                    if i and (not source or i != source.id)]
    if d and d.artifact not in inputs_ids:
        inputs_ids.append(d.artifact)

    def compute(job: Job) -> dict:
        # Scratch lives in the job's folder in the run directory: a killed run leaves nothing
        # in the system temp dir, and the next run of this artifact removes it (under its lock).
        with tempfile.TemporaryDirectory(prefix=".scratch-", dir=job.dir) as scratch:
            keep = Path(scratch) / "keep"
            keep.mkdir()
            v = validate(info, profiles, inputs, labels, reference, reference_source, progress,
                         replace(extras, keep=keep, scratch=Path(scratch)))
            for folder in sorted(keep.iterdir()):  # the validated binaries, per target
                for f in sorted(folder.iterdir()):
                    shutil.copyfile(f, job.dir / f"{folder.name}.{f.name}")
        v.report["model"]["artifact"] = source.id if source else None
        v.report["dense_note"] = extras.dense_note
        dense = store.find("export", d.artifact) if d else None
        v.report["cost"] = rep.cost(source, dense)
        (job.dir / "report.json").write_text(rep.to_json(v.report))
        (job.dir / "report.md").write_text(rep.to_markdown(v.report))
        (job.dir / "reference.npz").write_bytes(
            rep.reference_npz(v, inputs, labels, reference, reference_source))
        return rep.metrics(v.report)

    art, cached = store.run(STAGE, config, inputs_ids, compute)
    _gate(json.loads(art.file("report.json").read_text()), art)
    return art, cached


def _gate(report: dict, art: Artifact) -> None:
    failed = failures(report)
    if failed:
        e = GateFailed("; ".join(failed) + f" (report: {art.path / 'report.md'})")
        e.artifact = art  # so the caller can still show the stored report
        raise e


def load_reference(path: Path, inputs_shape: tuple | None = None) -> tuple[np.ndarray, np.ndarray,
                                                                            np.ndarray | None, str]:
    """A reference.npz (as stored in validate artifacts and bundles): inputs, logits, labels,
    source. Only those four members are read, each checked against REFERENCE_BYTES first."""
    z = npz_arrays(Path(path), "reference file", ("inputs", "logits", "labels", "source"),
                   Budget("a reference file", REFERENCE_BYTES))
    if "inputs" not in z or "logits" not in z:
        raise UserError(f"{path} lacks 'inputs' or 'logits': not an edgeprune reference")
    source = str(z["source"]) if "source" in z else f"npz:{Path(path).name}"
    return z["inputs"], z["logits"], z.get("labels"), source
