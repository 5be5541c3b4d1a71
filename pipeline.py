"""The chain of stages as library calls: train → search → retrain → export → validate →
package, and `compress`, which runs them in order. The CLI, the benchmarks and users' scripts
all call these.

This module sits above the three packages it chains (`edgeprune`, the core; `export`;
`targets`): it imports them, and none of them imports it (tests/test_layering.py). Each call
opens its inputs (a model.pt, a mask, data), hands typed configs to its stage and returns
`(artifact, cached)`. Stage modules that need PyTorch are imported inside the calls: the CLI
imports this module, and `edgeprune verify` must run on a device without PyTorch.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from edgeprune.artifacts import Artifact, Store, open_artifact
from edgeprune.config import (DataConfig, ExportConfig, ImportConfig, ModelConfig, PackageConfig,
                     RetrainConfig, RunConfig, SearchConfig, TrainConfig, ValidateConfig)
from edgeprune.errors import GateFailed, UserError
from edgeprune.nir_support import require_nir

Report = Callable[[dict], None]
DEFAULT_DATA = "digits"


def _quiet(_event: dict) -> None:
    pass


def device(run: RunConfig) -> str:
    """The torch device this process trains on (under torchrun: this rank's)."""
    import torch

    from edgeprune import distributed

    if run.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but this torch build sees no CUDA GPU")
    return distributed.init(run.device)


def _stage(report: Report, name: str, **info) -> None:
    report({"event": "stage", "stage": name, **info})


def train(store: Store, data: DataConfig, model: ModelConfig, optim: TrainConfig,
          run: RunConfig = RunConfig(), report: Report = _quiet) -> tuple[Artifact, bool]:
    """Train a dense SNN on `data` (digits when none is named)."""
    data, ds = _dense_data(data)
    _fits(model, optim, ds, run)
    return _train(store, data, ds, model, optim, run, report)


def _dense_data(data: DataConfig):
    from edgeprune import stage_inputs

    data = data if data.name else replace(data, name=DEFAULT_DATA)
    return data, stage_inputs.load_data(data)


def _fits(model: ModelConfig, optim: TrainConfig, ds, run: RunConfig) -> None:
    """Refuse, before the network is even built, a dense training the memory cannot hold."""
    from edgeprune.footprint import check_training
    from edgeprune.models import ModelSpec

    check_training(ModelSpec.for_data(model, ds), min(optim.batch_size, len(ds.y_train)),
                   run.device)


def _train(store, data, ds, model, optim, run, report) -> tuple[Artifact, bool]:
    from edgeprune.train_stage import train as train_stage

    run = replace(run, device=device(run))
    _stage(report, "train", epochs=optim.epochs)
    return train_stage(store, data, ds, model, optim, run, report)


def search(store: Store, model: Path, cfg: SearchConfig, data: DataConfig = DataConfig(),
           run: RunConfig = RunConfig(), from_mask: Path | None = None,
           report: Report = _quiet) -> tuple[Artifact, bool]:
    """Search a ticket of the dense model at `model` (a model.pt or its artifact folder)."""
    from edgeprune import stage_inputs
    from edgeprune.search.search_stage import search as search_stage

    run = replace(run, device=device(run))
    trunk = stage_inputs.open_search(from_mask) if from_mask else None
    dense = stage_inputs.open_model(model, run.device)
    data, ds = stage_inputs.dataset_for(dense, data)
    _stage(report, "search", method=cfg.method)
    return search_stage(store, dense, data, ds, cfg, run, report, trunk)


def retrain(store: Store, model: Path, mask: Path, cfg: RetrainConfig,
            data: DataConfig = DataConfig(), run: RunConfig = RunConfig(),
            report: Report = _quiet) -> tuple[Artifact, bool]:
    """Retrain the ticket of search artifact `mask` at the dense model's full T."""
    from edgeprune import stage_inputs
    from edgeprune.retrain_stage import retrain as retrain_stage

    run = replace(run, device=device(run))
    ticket = stage_inputs.open_search(mask)
    dense = stage_inputs.open_model(model, run.device)
    data, ds = stage_inputs.dataset_for(dense, data)
    _stage(report, "retrain", epochs=cfg.train_config(dense.train_epochs).epochs)
    return retrain_stage(store, dense, ticket, data, ds, cfg, run, report)


def export(store: Store, model: Path, cfg: ExportConfig = ExportConfig(),
           report: Report = _quiet) -> tuple[Artifact, bool]:
    """Export the model.pt inside a train/retrain/import artifact folder."""
    from export.export_stage import export as export_stage

    model = Path(model)
    if not model.exists():
        raise UserError(f"model file {model} does not exist")
    source = open_artifact(model)
    if model.is_dir() or model.name != "model.pt":
        raise UserError(f"{model}: give the model.pt file inside an artifact folder")
    if cfg.nir is not False:  # an old nir fails in one line here, not inside the NIR pass
        require_nir()
    _stage(report, "export")
    return export_stage(store, source, cfg, report)


def validate(store: Store, model: Path, cfg: ValidateConfig = ValidateConfig(), *,
             against: Path | None = None, reference: Path | None = None,
             data: DataConfig = DataConfig(), dense: DenseExport | None = None,
             report: Report = _quiet) -> tuple[Artifact, bool]:
    """Validate an ONNX model on the target profiles of `cfg`, beside the dense model's export
    `dense` (from `dense_export`; found through the lineage when not given). Reference logits come from
    `against` (the model.pt it was exported from, run here with PyTorch) or a stored
    `reference` npz. Raises UserError on bad input before any work, and GateFailed (with
    `.artifact`) after storing a report whose gates failed. With `reference`, nothing here needs
    PyTorch (a device install has none); `against` and `data` do."""
    import numpy as np

    from targets import modelfile, validate_stage
    from targets.validation import take

    profs = _profiles(cfg)
    if against is not None and reference is not None:
        raise UserError("give --against (PyTorch reference) or --reference (npz), not both")
    model = Path(model)
    source = validate_stage.source_artifact(model)  # a damaged export artifact is refused before any work
    info = modelfile.inspect(model)
    if cfg.dense and dense is None:
        dense = dense_export(store, source, profs, report)
    extras = _validation_extras(source, cfg, dense or DenseExport(None))
    ref = ref_source = None
    extra: list[str] = []
    if reference is not None:
        feed, ref, labels, ref_source = validate_stage.load_reference(Path(reference))
        data_name = f"reference:{Path(reference).name}"
        if cfg.limit:
            feed, ref = take(feed, cfg.limit), ref[:cfg.limit]
            labels = labels[:cfg.limit] if labels is not None else None
    else:
        _need_torch("--data" if against is None else "--against")
        from edgeprune import stage_inputs

        name = data.name or _trained_on(against) or DEFAULT_DATA
        ds = stage_inputs.load_data(replace(data, name=name, train_subset=None))
        x, labels = ds.x_test.numpy(), ds.y_test.numpy()
        if cfg.limit:
            x, labels = x[:cfg.limit], labels[:cfg.limit]
        feed, data_name = modelfile.model_inputs(x, info), name
    if against is not None:
        ref, model_id = _reference_logits(Path(against), np.ascontiguousarray(feed), info)
        ref_source = (f"pytorch:{Path(against).name}" + (f"@{model_id}" if model_id else "")
                      + " (BatchNorm folded, as exported)")
        extra = [model_id] if model_id else []
    _stage(report, "validate", targets=[p.name for p in profs])
    return validate_stage.run_validate(store, model, profs, feed, labels, data_name=data_name,
                              reference=ref, reference_source=ref_source,
                              extra_inputs=tuple(extra), info=info,
                              progress=lambda text: report({"event": "message", "text": text}),
                              extras=extras)


def _has_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def _need_torch(option: str) -> None:
    """A one-line UserError when PyTorch is not installed (a device install)."""
    if not _has_torch():
        raise UserError(f"{option} needs PyTorch; on a device use --reference")


def _trained_on(model_pt: Path | None) -> str | None:
    """The dataset a model artifact records (the test set validation defaults to)."""
    if model_pt is None or not (Path(model_pt).parent / "manifest.json").exists():
        return None
    return (open_artifact(Path(model_pt).parent).config.get("data") or {}).get("name")


ORT_TARGET = "x86_64"  # `validate`'s default target, and the first of compress's
C_TARGET = "c-x86_64"  # added to compress's default where this host compiles for it


def default_targets() -> tuple[str, str | None]:
    """compress's targets when none are named, and why the C runtime is not among them (None
    when it is): ONNX Runtime, and the C runtime wherever a C compiler for it is found, so the
    summary shows what the sparsity buys on this CPU."""
    from targets import profiles as profiles_mod, tools

    isa = profiles_mod.load(C_TARGET).isa
    tool = tools.compiler_for(isa)
    if tool is not None and tool.find():
        return f"{ORT_TARGET},{C_TARGET}", None
    fix = (f"install one with `apt-get install {tool.package}`" if tool is not None
           else f"it needs an {isa} host")
    what = f"no C compiler ({', '.join(tool.names)}) found" if tool is not None else \
        f"this {tools.host_isa()} host cannot build {isa} code"
    return ORT_TARGET, f"{what} for the C runtime target {C_TARGET}; {fix}"


def _profiles(cfg: ValidateConfig) -> list:
    """The target profiles `cfg` names (`validate`'s default when none), with its overrides;
    refused before any work when one is bad or needs a tool (compiler, cross compiler,
    emulator) that is not installed."""
    from targets import profiles as profiles_mod

    profs = profiles_mod.load_many(ORT_TARGET if cfg.target is None else cfg.target)
    if cfg.latency_budget_ms is not None:
        profs = [p.with_latency_budget(cfg.latency_budget_ms) for p in profs]
    profs = [p.with_dense_gates(cfg.min_speedup, cfg.max_accuracy_drop)
             .with_remote(cfg.remote, cfg.ssh_config, cfg.remote_python) for p in profs]
    _tools_for(profs)
    return profs


def _tools_for(profs: list) -> None:
    """Refuse, before any work, targets whose tools (compiler, emulator, ssh) are not
    installed, or that no platform here runs."""
    from targets import registry

    for p in profs:
        registry.check_tools(p)


def _c_sources(art: Artifact | None) -> Path | None:
    """The artifact's folder when it holds the C runtime's sources (each sha256 checked)."""
    from targets.c_build import FILES

    if art is None or not all(n in art.manifest["files"] for n in FILES):
        return None
    for n in FILES:
        art.file(n)
    return art.path


def _runs_c(profs: list) -> bool:
    """Whether a target runs the export's C runtime (so the dense model's export needs it)."""
    from targets import registry

    return any(registry.runtime_of(p).export_files for p in profs)


@dataclass(frozen=True)
class DenseExport:
    """The dense model's export beside a ticket, or why there is none."""

    artifact: Artifact | None
    cached: bool = False
    note: str = ""


def dense_export(store: Store, source: Artifact | None, profs: list,
                 report: Report = _quiet) -> DenseExport:
    """The dense model's export that a ticket's validation measures beside it: the ticket's
    lineage (export ← retrain ← search ← dense) names the dense model, which is exported as a
    normal export stage (a cache hit after the first time) with what validation compares: logits,
    no compaction or int8, and the C runtime when a C target is named. Returns the export
    artifact, or the reason there is no dense model to compare with."""
    if source is None or source.stage != "export":
        return DenseExport(None, note="a loose .onnx file has no lineage to find its dense "
                                      "model by")
    index = {a.id: a for a in Store(source.path.parent).artifacts()}
    parent = index.get((source.manifest.get("inputs") or [None])[0])
    if parent is None:
        return DenseExport(None, note="the exported model's artifact is not in the run "
                                      "directory")
    if parent.stage != "retrain":
        return DenseExport(None, note=f"the model is a {parent.stage} artifact, not a ticket: "
                                      "it has no dense ancestor to compare with")
    dense = index.get(parent.manifest["inputs"][0])
    if dense is None:
        return DenseExport(None, note=f"the ticket's dense model {parent.manifest['inputs'][0]} "
                                      f"is not in the run directory {source.path.parent}")
    c = source.config
    cfg = ExportConfig(outputs="logits", opset=c.get("opset", 17), sparse_initializers=False,
                       compact=False, int8=False, nir=False,
                       c_runtime=None if _runs_c(profs) else False,
                       timesteps=c.get("timesteps"), probe=c.get("probe", 256))
    if not _has_torch():
        return DenseExport(None, note="exporting the dense model needs PyTorch, which this "
                                      "install lacks")
    from export.export_stage import export as export_stage

    _stage(report, "export (dense)")
    return DenseExport(*export_stage(store, dense, cfg, report))


def _validation_extras(source: Artifact | None, cfg: ValidateConfig, dense: DenseExport):
    """The C sources, the int8 model and the dense model's export that validating `source`'s
    model.onnx also runs."""
    from targets import modelfile
    from targets.validation import Dense, Extras

    extras = Extras(c_sources=_c_sources(source))
    if source is not None and "model.int8.onnx" in source.manifest["files"]:
        extras.int8 = modelfile.inspect(source.file("model.int8.onnx"))
        extras.int8_required = source.config.get("int8") == "on"
    art = dense.artifact
    if not cfg.dense:
        extras.dense_note = "not asked (--no-dense)"
    elif art is None:
        extras.dense_note = dense.note
    else:
        extras.dense = Dense(artifact=art.id, onnx=modelfile.inspect(art.file("model.onnx")),
                             c_sources=_c_sources(art))
    return extras


def _reference_logits(model_pt: Path, feed, info) -> tuple:
    from export.parity import reference_logits
    from edgeprune import stage_inputs

    m = stage_inputs.open_model(model_pt)
    if info.timesteps is not None and info.timesteps != m.spec.timesteps:
        raise UserError(f"{model_pt} runs T={m.spec.timesteps} but the ONNX model was exported "
                        f"with T={info.timesteps}: --against must be the model it was exported "
                        "from")
    # The reference is the network the exported files hold: BatchNorm folded into the conv
    # before it. Folding is exact algebra but rounds differently, and a membrane potential
    # within ~1e-6 of the threshold then spikes on one side only: on Fashion-MNIST that moved
    # logits by up to 0.4 against the unfolded model while every runtime (ONNX Runtime, the C
    # runtime) matched the folded one to ~1e-5. The export stage records that folding effect
    # (`spike_mismatches_vs_folded`, near-threshold counts); validation checks the runtimes.
    from export.prepare import for_export

    return (reference_logits(for_export(m.model), m.spec.timesteps, feed),
            m.artifact.id if m.artifact else None)


def package(source: Path, cfg: PackageConfig = PackageConfig(), out_dir: Path | None = None,
            report: Report = _quiet) -> tuple[Artifact, bool]:
    """Bundle a validated model: `source` is a run directory, a validate artifact, or an
    export artifact that has been validated."""
    from targets.bundle import package as package_stage

    _stage(report, "package")
    return package_stage(source, cfg, out_dir,
                         progress=lambda text: report({"event": "message", "text": text}))


def is_nir(path: Path | None) -> bool:
    return path is not None and Path(path).suffix.lower() == ".nir"


def import_model(store: Store, model_def: str | None, state_dict: Path, cfg: ImportConfig,
                 data: DataConfig = DataConfig(), allow_pickle: bool = False,
                 run: RunConfig = RunConfig(), report: Report = _quiet) -> tuple[Artifact, bool]:
    """Bring in a model from elsewhere as a self-describing model.pt: a user's Norse or
    snnTorch model (definition + state_dict), or a NIR file (`state_dict` ending in .nir; read
    as data, measured against the NIR equations and the writing framework's reader).
    `data.name == "none"`: no dataset (then cfg, or the NIR graph, gives input shape and
    classes)."""
    from edgeprune import stage_inputs
    from edgeprune.importers.import_stage import import_model as import_stage, import_nir

    name = data.name or DEFAULT_DATA
    ds = None if name == "none" else stage_inputs.load_data(replace(data, name=name))
    _stage(report, "import")
    if is_nir(state_dict):
        if model_def:
            raise UserError("a NIR file describes its model itself: leave out --model-def")
        require_nir()
        from export.nir_reference import references

        return import_nir(store, Path(state_dict), cfg, replace(data, name=name), ds, run.seed,
                          references)
    if cfg.dt is not None or cfg.convention is not None:
        raise UserError("--dt and --convention are for NIR files; a model from code keeps its "
                        "own time step")
    return import_stage(store, model_def, state_dict, cfg, replace(data, name=name), ds,
                        allow_pickle, run.seed)


def _reachable_before_training(plan: Plan, ds) -> None:
    """A sparsity that leaves fewer weights than there are prunable layers fails whatever the
    training does: refuse it before the dense model is trained. (The search checks the exact
    condition on the trained weights before it starts.)"""
    from edgeprune.models import ModelSpec, prunable

    sizes = [p.numel() for p in prunable(ModelSpec.for_data(plan.model, ds).build()).values()]
    total = sum(sizes)
    kept = total - round(plan.search.sparsity * total)
    if kept < len(sizes):
        raise UserError(f"sparsity {plan.search.sparsity:.6g} keeps {kept} of {total:,} weights, "
                        f"fewer than the {len(sizes)} prunable layers: some layer would have no "
                        f"weight; at most {(total - len(sizes)) / total:.6g} can keep one per "
                        "layer")


# -- compress ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """Everything `compress` runs: one config per stage."""

    data: DataConfig = DataConfig()
    run: RunConfig = RunConfig()
    model: ModelConfig = ModelConfig()  # the dense model's, when compress trains it
    train: TrainConfig = TrainConfig()
    search: SearchConfig = SearchConfig()
    retrain: RetrainConfig = RetrainConfig()
    export: ExportConfig = ExportConfig()
    validate: ValidateConfig = ValidateConfig()
    imports: ImportConfig = ImportConfig()
    package: PackageConfig | None = None  # None: no bundle


@dataclass
class Compressed:
    """The artifacts of one compress run, in chain order."""

    artifacts: dict[str, Artifact] = field(default_factory=dict)
    cached: dict[str, bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # lines the user must see (also reported)

    def add(self, name: str, result: tuple[Artifact, bool]) -> Artifact:
        self.artifacts[name], self.cached[name] = result
        return result[0]


def compress(store: Store, plan: Plan, model: Path | None = None, *,
             model_def: str | None = None, state_dict: Path | None = None,
             allow_pickle: bool = False, from_mask: Path | None = None,
             report: Report = _quiet) -> Compressed:
    """search → retrain → export → validate (→ package) on `model`; a user's Norse or snnTorch
    model (`model_def` + `state_dict`) or a NIR file (`model` ending in .nir) is imported
    first, and with neither a dense model is trained on `plan.data`. A failed gate raises GateFailed after the report is stored."""
    out = Compressed()

    def note(text: str) -> None:
        out.notes.append(text)
        report({"event": "note", "text": text})

    vcfg = plan.validate
    if vcfg.target is None:  # the default targets; a named --target is always obeyed
        targets, why = ((ORT_TARGET, None) if plan.export.c_runtime is False
                        else default_targets())
        vcfg = replace(vcfg, target=targets)
        if why:
            from targets.tools import SEE_DOCTOR

            note(f"validating on ONNX Runtime only: {why} {SEE_DOCTOR}")
    if plan.export.nir is not False or is_nir(model):  # before any training, not after it
        require_nir()
    profs = _profiles(vcfg)  # a bad profile or a missing compiler: refused before training
    device(plan.run)
    if is_nir(model) and not (model_def or state_dict):
        model, state_dict = None, model  # a NIR file is imported first, like a model from code
        if not Path(state_dict).is_file():
            raise UserError(f"NIR file {state_dict} does not exist")
        model = out.add("imported", import_model(store, None, state_dict, plan.imports,
                                                 plan.data, False, plan.run, report)
                        ).path / "model.pt"
    elif model_def or state_dict:
        if model is not None or state_dict is None:
            raise UserError("give either MODEL or --model-def FILE.py:FUNCTION with "
                            "--state-dict W.pt")
        model = out.add("imported", import_model(store, model_def, state_dict, plan.imports,
                                                 plan.data, allow_pickle, plan.run, report)
                        ).path / "model.pt"
    if model is None:
        data, ds = _dense_data(plan.data)
        _fits(plan.model, plan.train, ds, plan.run)
        _reachable_before_training(plan, ds)
        model = out.add("dense", _train(store, data, ds, plan.model, plan.train, plan.run,
                                        report)).path / "model.pt"
    mask = out.add("search", search(store, model, plan.search, plan.data, plan.run, from_mask,
                                    report))
    ticket = out.add("retrain", retrain(store, model, mask.path, plan.retrain, plan.data,
                                        plan.run, report))
    onnx = out.add("export", export(store, ticket.path / "model.pt", plan.export, report))
    from targets.registry import runtime_of

    if plan.validate.target is None and _c_sources(onnx) is None and \
            any(runtime_of(p).export_files for p in profs):
        # a default C target the export could not write the C runtime for is left out, saying
        # why (a named one is refused by validation, exit 2)
        vcfg = replace(vcfg, target=ORT_TARGET)
        profs = _profiles(vcfg)
        note(f"validating on ONNX Runtime only: the C runtime was not written for this model "
             f"({onnx.metrics.get('c_runtime')})")
    data_name = ticket.config["data"]["name"]
    dense = None
    if plan.validate.dense:  # the dense model measured beside the ticket: a chain step of its own
        dense = dense_export(store, onnx, profs, report)
        if dense.artifact is not None:
            out.add("dense-export", (dense.artifact, dense.cached))
    try:
        val = out.add("validate", validate(store, onnx.path / "model.onnx", vcfg,
                                           against=ticket.path / "model.pt",
                                           data=DataConfig(data_name), dense=dense,
                                           report=report))
    except GateFailed as e:
        if getattr(e, "artifact", None) is not None:
            out.artifacts["validate"], out.cached["validate"] = e.artifact, False
        e.compressed = out
        raise
    if plan.package is not None:
        out.add("package", package(val.path, plan.package, report=report))
    return out
