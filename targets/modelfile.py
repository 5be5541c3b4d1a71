"""What an exported ONNX file is: checked, fingerprinted, and its edgeprune metadata decoded.

The exporter writes `edgeprune.*` keys into the model's metadata_props (T, encoding, neuron,
sparsity, class names, ...). Values that are JSON are decoded; the rest stay strings.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeprune.hashing import file_sha256
from edgeprune.errors import UserError

PREFIX = "edgeprune."


@dataclass
class ModelInfo:
    path: Path
    sha256: str
    bytes: int
    metadata: dict = field(default_factory=dict)  # edgeprune.* keys, prefix stripped, decoded
    input_name: str = "input"
    input_shape: list = field(default_factory=list)  # ints or symbolic names
    output_name: str = "logits"
    checked_with_onnx: bool = False

    @property
    def spike_input(self) -> bool:
        """(T, batch, C, H, W): the exporter left Poisson encoding to the caller."""
        return len(self.input_shape) == 5

    @property
    def timesteps(self) -> int | None:
        t = self.metadata.get("timesteps")
        return int(t) if t is not None else None

    def to_dict(self) -> dict:
        return {"path": str(self.path), "sha256": self.sha256, "bytes": self.bytes,
                "metadata": self.metadata, "input_name": self.input_name,
                "input_shape": self.input_shape, "output_name": self.output_name,
                "checked_with_onnx": self.checked_with_onnx}


def inspect(path: Path) -> ModelInfo:
    """Check an ONNX file (onnx.checker when onnx is installed, and a real ORT load) and read
    its interface and metadata. A missing, empty, truncated or invalid file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX model {path} does not exist")
    if path.stat().st_size == 0:
        raise UserError(f"ONNX model {path} is empty")
    checked = _check_with_onnx(path)
    import onnxruntime as ort

    try:
        so = ort.SessionOptions()
        so.log_severity_level = 3  # only errors: warnings about unused initializers are noise here
        sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise UserError(f"{path} is not a model ONNX Runtime can load: {_first_line(e)}") from None
    inputs, outputs = sess.get_inputs(), sess.get_outputs()
    if len(inputs) != 1:
        raise UserError(f"{path} has {len(inputs)} inputs; validate expects one image input "
                        "(the unrolled model.onnx, not model.step.onnx)")
    try:
        meta = sess.get_modelmeta().custom_metadata_map
    except UnicodeDecodeError:  # ONNX Runtime loads the graph but cannot decode its metadata
        raise UserError(f"{path}: its metadata is not valid UTF-8 (a damaged file)") from None
    return ModelInfo(path=path, sha256=file_sha256(path), bytes=path.stat().st_size,
                     metadata={k[len(PREFIX):]: _decode(v) for k, v in sorted(meta.items())
                               if k.startswith(PREFIX)},
                     input_name=inputs[0].name, input_shape=list(inputs[0].shape),
                     output_name=outputs[0].name, checked_with_onnx=checked)


def _check_with_onnx(path: Path) -> bool:
    try:
        import onnx
    except ImportError:  # a device install: ONNX Runtime's own load below is the check
        return False
    try:
        onnx.checker.check_model(str(path))
    except Exception as e:  # DecodeError, ValidationError, ... all mean "not a valid model"
        raise UserError(f"{path} is not a valid ONNX model (onnx.checker: {_first_line(e)})") from None
    return True


def _decode(value: str):
    try:
        return json.loads(value)
    except (json.JSONDecodeError, TypeError):
        return value


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def model_inputs(images: np.ndarray, info: ModelInfo, seed: int = 0) -> np.ndarray:
    """The array to feed the model for images (N, C, H, W) in [0, 1].

    Direct encoding: the images themselves (normalization is inside the graph). Spike input
    (T, N, C, H, W): Bernoulli spikes with p = pixel, from a seeded generator, so the reference
    model can be fed exactly the same spikes."""
    x = np.ascontiguousarray(images, dtype=np.float32)
    if x.ndim != 4:
        raise UserError(f"test images must be (N, C, H, W), got shape {tuple(x.shape)}")
    want = info.input_shape[-3:]
    if all(isinstance(d, int) for d in want) and list(x.shape[1:]) != list(want):
        raise UserError(f"the model expects images of shape {want}, the data has "
                        f"{list(x.shape[1:])}: wrong --data for this model?")
    if not info.spike_input:
        return x
    t = info.input_shape[0] if isinstance(info.input_shape[0], int) else info.timesteps
    if not t:
        raise UserError(f"{info.path}: spike input with no fixed T and no edgeprune.timesteps")
    rng = np.random.default_rng(seed)
    return (rng.random((t, *x.shape), dtype=np.float32) < np.clip(x, 0, 1)).astype(np.float32)
