"""Every reader fuzzed with malformed and hostile inputs (Hypothesis): each either reads the
input or refuses it with one UserError line (exit 2 on the command line; a bundle whose files do
not match its manifest is GateFailed, exit 1). Never another exception, a hang, a file left
behind, or code executed.

Case counts are kept small enough for CI; `FUZZ_SCALE=10` multiplies them for a longer hunt."""
import gzip
import io
import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from edgeprune.errors import GateFailed, UserError

SCALE = int(os.environ.get("FUZZ_SCALE", "1"))
FUZZ = settings(max_examples=60 * SCALE, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def _one_line(e: Exception) -> None:
    text = str(e)
    assert text.strip() and "Traceback" not in text
    # the CLI prints one line whatever the text holds; the message itself must stand alone
    assert len(" ".join(text.split())) < 2000


def _refused_or_read(fn, *args, allowed=(UserError,)):
    try:
        return fn(*args)
    except allowed as e:
        _one_line(e)
        return None


class _Bomb:
    """Unpickling this would create the marker file: code execution, which must never happen."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# -- array strategies ---------------------------------------------------------------------------

DTYPES = st.sampled_from([np.uint8, np.int64, np.float32, np.float64, np.bool_, np.int8,
                          np.complex64, "U3"])


@st.composite
def arrays(draw, max_dims=5):
    shape = draw(st.lists(st.integers(0, 4), min_size=0, max_size=max_dims))
    dtype = np.dtype(draw(DTYPES))
    n = int(np.prod(shape)) if shape else 1
    if dtype.kind == "U":
        return np.array(draw(st.lists(st.text(max_size=3), min_size=n, max_size=n)),
                        dtype=dtype).reshape(shape)
    values = draw(st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                                     st.integers(-300, 300)), min_size=n, max_size=n))
    with np.errstate(all="ignore"):
        return np.array(values, dtype=np.float64).astype(dtype).reshape(shape)


# -- npz ----------------------------------------------------------------------------------------

@FUZZ
@given(st.dictionaries(st.sampled_from(["x_train", "y_train", "x_test", "y_test",
                                        "class_names", "extra"]), arrays(), max_size=6))
def test_npz_reader(tmp_path, contents):
    from edgeprune import data

    path = tmp_path / "d.npz"
    np.savez(path, **contents)
    ds = _refused_or_read(data.load, str(path))
    if ds is not None:  # what loads is clean
        assert torch.isfinite(ds.x_train).all() and len(ds.y_train) > 0 and len(ds.y_test) > 0
        assert ds.y_train.dtype == torch.int64 and int(ds.y_train.min()) >= 0
        assert int(ds.y_train.max()) < ds.num_classes


@FUZZ
@given(st.binary(max_size=400))
def test_npz_reader_on_random_bytes(tmp_path, blob):
    from edgeprune import data

    path = tmp_path / "d.npz"
    path.write_bytes(blob)
    with pytest.raises(UserError):
        data.load(str(path))


def test_npz_with_a_pickled_object_is_refused_and_runs_nothing(tmp_path):
    from edgeprune import data

    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    np.save(buf, np.array([_Bomb(marker)], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(tmp_path / "evil.npz", "w") as z:
        for key in ("x_train", "y_train", "x_test", "y_test"):
            z.writestr(f"{key}.npy", buf.getvalue())
    with pytest.raises(UserError):
        data.load(str(tmp_path / "evil.npz"))
    assert not marker.exists()


# -- IDX ----------------------------------------------------------------------------------------

@st.composite
def idx_blobs(draw):
    kind = draw(st.sampled_from(["random", "header", "valid-ish"]))
    if kind == "random":
        raw = draw(st.binary(max_size=300))
    else:
        dims = draw(st.lists(st.integers(0, 6), min_size=0, max_size=4))
        magic = bytes([0, 0, draw(st.sampled_from([8, 8, 9, 13])), len(dims)])
        header = magic + b"".join(d.to_bytes(4, "big") for d in dims)
        body_len = int(np.prod(dims)) if dims else 0
        body_len += draw(st.integers(-3, 3)) if kind == "header" else 0
        raw = header + draw(st.binary(min_size=max(body_len, 0), max_size=max(body_len, 0)))
    return gzip.compress(raw) if draw(st.booleans()) else raw, raw


@FUZZ
@given(idx_blobs())
def test_idx_reader(tmp_path, blob):
    from edgeprune import data

    stored, raw = blob
    path = tmp_path / ("f.idx.gz" if stored is not raw else "f.idx")
    path.write_bytes(stored)
    out = _refused_or_read(data.read_idx, path)
    if out is not None:
        assert out.dtype == np.uint8


@FUZZ
@given(st.integers(0, 255), st.integers(1, 4), st.booleans())
def test_idx_directory_labels_out_of_range_are_refused(tmp_path, label, n, gz):
    """Fashion-MNIST files whose labels leave 0..9 name the file and the index."""
    from edgeprune import data

    tmp_path = Path(tempfile.mkdtemp(dir=tmp_path))  # one folder per example: gz and raw differ

    def write(name, arr):
        raw = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        raw += arr.astype(np.uint8).tobytes()
        (tmp_path / (name + (".gz" if gz else ""))).write_bytes(gzip.compress(raw) if gz else raw)

    labels = np.arange(10).repeat(n)
    labels[-1] = label
    write("train-images-idx3-ubyte", np.zeros((len(labels), 4, 4)))
    write("train-labels-idx1-ubyte", labels)
    write("t10k-images-idx3-ubyte", np.zeros((2, 4, 4)))
    write("t10k-labels-idx1-ubyte", np.array([0, 1]))
    ds = _refused_or_read(data.load, f"fashion-mnist:{tmp_path}")
    assert (ds is None) == (label > 9)


# -- CIFAR batches ---------------------------------------------------------------------------------

@st.composite
def cifar_batches(draw):
    kind = draw(st.sampled_from(["bytes", "dict", "bomb"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "bomb":
        return pickle.dumps({b"data": _Bomb("/tmp/edgeprune-fuzz-pwned"), b"labels": [0]})
    n = draw(st.integers(0, 3))
    d = {}
    if draw(st.booleans()):
        d[b"data"] = np.frombuffer(draw(st.binary(min_size=3072 * n, max_size=3072 * n + 5)),
                                   np.uint8)
    if draw(st.booleans()):
        d[b"labels"] = draw(st.lists(st.integers(-2, 12), min_size=0, max_size=4))
    return pickle.dumps(d)


@FUZZ
@given(cifar_batches(), cifar_batches())
def test_cifar_reader(tmp_path, train, test):
    from edgeprune import data

    (tmp_path / "data_batch_1").write_bytes(train)
    (tmp_path / "test_batch").write_bytes(test)
    _refused_or_read(data.load, f"cifar10:{tmp_path}")
    assert not Path("/tmp/edgeprune-fuzz-pwned").exists()


# -- model.pt and state dicts ----------------------------------------------------------------------

@st.composite
def torch_files(draw, marker):
    kind = draw(st.sampled_from(["bytes", "dict", "spec", "bomb"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    buf = io.BytesIO()
    if kind == "bomb":
        torch.save({"format": "edgeprune.model/1", "x": _Bomb(marker)}, buf)
    elif kind == "dict":
        torch.save(draw(st.dictionaries(st.text(max_size=5), st.one_of(
            st.integers(), st.text(max_size=5), st.just(torch.zeros(2))), max_size=4)), buf)
    else:
        from edgeprune.models import ModelSpec

        spec = ModelSpec().to_dict()
        spec[draw(st.sampled_from(sorted(spec)))] = draw(st.one_of(
            st.integers(-3, 3), st.text(max_size=4), st.none(), st.lists(st.integers(), max_size=3)))
        torch.save({"format": "edgeprune.model/1", "spec": spec,
                    "state_dict": {"stem.0.weight": torch.zeros(16, 1, 3, 3)}}, buf)
    return buf.getvalue()


@settings(max_examples=40 * SCALE, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_model_pt_and_state_dict_readers(tmp_path, data):
    from edgeprune import checkpoint
    from edgeprune.importers.usercode import load_weights

    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    path.write_bytes(data.draw(torch_files(str(marker))))
    _refused_or_read(checkpoint.load, path)
    _refused_or_read(load_weights, path)
    assert not marker.exists()


# -- ONNX files given to validate ----------------------------------------------------------------

@pytest.fixture(scope="module")
def onnx_bytes(tmp_path_factory):
    from edgeprune.models import ModelSpec
    from export.onnx_files import write_onnx

    spec = ModelSpec()
    folder = tmp_path_factory.mktemp("onnx")
    write_onnx(spec, spec.build(), folder, timesteps=2, step=False)
    return (folder / "model.onnx").read_bytes()


@FUZZ
@given(st.data())
def test_onnx_reader(tmp_path, onnx_bytes, data):
    from targets import modelfile

    blob = bytearray(onnx_bytes)
    how = data.draw(st.sampled_from(["truncate", "flip", "random"]))
    if how == "truncate":
        blob = blob[:data.draw(st.integers(0, len(blob) - 1))]
    elif how == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            blob[data.draw(st.integers(0, len(blob) - 1))] ^= data.draw(st.integers(1, 255))
    else:
        blob = data.draw(st.binary(max_size=500))
    path = tmp_path / "m.onnx"
    path.write_bytes(bytes(blob))
    _refused_or_read(modelfile.inspect, path)


# -- bundles given to verify ------------------------------------------------------------------------

@st.composite
def bundles(draw):
    from targets import archive, bundle

    kind = draw(st.sampled_from(["bytes", "tar", "manifest"]))
    if kind == "bytes":
        return draw(st.binary(max_size=400))
    names = draw(st.lists(st.sampled_from(["model.onnx", "reference.npz", "manifest.json",
                                           "MODEL_CARD.md", "../escape", "a/../../b"]),
                          max_size=4, unique=True))
    files = {n: draw(st.binary(max_size=60)) for n in names}
    if kind == "manifest":  # self-consistent checksums around hostile content
        files.pop("manifest.json", None)
        files = {n: b for n, b in files.items() if ".." not in n}
        manifest = {"schema": bundle.SCHEMA, "name": "x",
                    "files": {n: {"sha256": __import__("hashlib").sha256(b).hexdigest(),
                                  "bytes": len(b)} for n, b in files.items()},
                    "targets": draw(st.one_of(st.none(), st.lists(st.dictionaries(
                        st.sampled_from(["isa", "target", "profile"]),
                        st.one_of(st.text(max_size=6), st.integers(), st.none())), max_size=2)))}
        files["manifest.json"] = bundle._manifest_bytes(manifest)
    try:
        return archive.pack("top", files)
    except ValueError:
        return b"not a tar"


@settings(max_examples=40 * SCALE, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bundles())
def test_bundle_reader(tmp_path, blob):
    from targets import bundle

    path = tmp_path / "b.tar.gz"
    path.write_bytes(blob)
    before = set(Path(tmp_path).iterdir())
    _refused_or_read(bundle.verify, path, allowed=(UserError, GateFailed))
    assert set(Path(tmp_path).iterdir()) == before  # extraction stays in its temporary folder
    assert not (tmp_path.parent / "escape").exists()


# -- recipes, profiles, manifests ---------------------------------------------------------------

TOML_VALUES = st.one_of(st.integers(-5, 10**6), st.floats(allow_nan=True), st.booleans(),
                        st.text(max_size=8), st.lists(st.integers(0, 9), max_size=3))


@FUZZ
@given(st.dictionaries(st.text(max_size=12), st.one_of(
    TOML_VALUES, st.dictionaries(st.text(max_size=12), TOML_VALUES, max_size=3)), max_size=4))
def test_recipe_reader(raw):
    from edgeprune import recipe

    _refused_or_read(recipe.parse, raw)


@FUZZ
@given(st.text(max_size=200))
def test_recipe_file_reader(tmp_path, text):
    from edgeprune import recipe

    (tmp_path / "r.toml").write_text(text)
    _refused_or_read(recipe.load, tmp_path / "r.toml")


@FUZZ
@given(st.dictionaries(st.sampled_from(["isa", "name", "description", "runtime", "latency",
                                        "memory", "parity", "accuracy", "emulation", "x"]),
                       st.one_of(TOML_VALUES, st.dictionaries(
                           st.sampled_from(["budget_ms", "runs", "warmup", "provider",
                                            "max_drop", "qemu_cpu", "batch_size", "y"]),
                           TOML_VALUES, max_size=3)), max_size=5))
def test_target_profile_reader(raw):
    from targets import profiles

    _refused_or_read(profiles.from_dict, raw)


@FUZZ
@given(st.one_of(st.binary(max_size=200), st.dictionaries(
    st.sampled_from(["schema", "stage", "id", "files", "config", "metrics", "inputs"]),
    st.one_of(TOML_VALUES, st.just("edgeprune.artifact/1"), st.dictionaries(
        st.text(max_size=6), st.dictionaries(st.sampled_from(["sha256", "bytes"]), TOML_VALUES),
        max_size=2)), max_size=7)))
def test_manifest_reader(tmp_path, manifest):
    from edgeprune.artifacts import open_artifact

    folder = tmp_path / "train-abc"
    folder.mkdir(exist_ok=True)
    (folder / "model.pt").write_bytes(b"x")
    raw = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    (folder / "manifest.json").write_bytes(raw)
    art = _refused_or_read(open_artifact, folder)
    if art is not None:
        _refused_or_read(art.file, "model.pt")


# -- NIR files given to import-model / compress ---------------------------------------------------

NIR_TYPES = ["Affine", "Linear", "Conv1d", "Conv2d", "Flatten", "SumPool2d", "AvgPool2d", "Scale",
             "Threshold", "LIF", "CubaLIF", "IF", "LI", "I", "Identity", "Delay", "NIRGraph",
             "Input", "Output", "Nonsense"]
NIR_KEYS = ["weight", "bias", "tau", "tau_mem", "tau_syn", "r", "v_leak", "v_threshold", "v_reset",
            "w_in", "threshold", "scale", "stride", "padding", "dilation", "groups", "kernel_size",
            "start_dim", "end_dim", "input_shape", "shape", "input_type", "delay"]


def _small_values(draw):
    """Plausible (so that readers get deep) or hostile values of a NIR node's field."""
    return draw(st.one_of(
        arrays(max_dims=4),
        st.floats(allow_nan=True, allow_infinity=True).map(np.float64),
        st.integers(-5, 70).map(np.int64),
        st.lists(st.integers(0, 9), min_size=1, max_size=4).map(lambda v: np.array(v, np.int64)),
        st.text(max_size=5)))


def _valid_chain(image: bool) -> list[tuple[str, dict]]:
    """A chain of valid nodes for input (1, 8, 8) (image) or (64,), every parameter kind used."""
    f = np.float64
    if image:
        return [("c", {"type": "Conv2d", "weight": np.ones((2, 1, 3, 3), np.float32),
                       "bias": np.zeros(2, np.float32), "stride": np.array([1, 1]),
                       "padding": np.array([1, 1]), "dilation": np.array([1, 1]),
                       "groups": np.int64(1)}),
                ("l", {"type": "CubaLIF", "tau_mem": np.full((2, 8, 8), 2e-3),
                       "tau_syn": np.full((2, 8, 8), 4e-3), "r": np.ones((2, 8, 8)),
                       "w_in": np.ones((2, 8, 8)), "v_leak": np.zeros((2, 8, 8)),
                       "v_threshold": np.ones((2, 8, 8)), "v_reset": np.zeros((2, 8, 8))}),
                ("p", {"type": "SumPool2d", "kernel_size": np.array([2, 2]),
                       "stride": np.array([2, 2]), "padding": np.array([0, 0])}),
                ("s", {"type": "Scale", "scale": np.full((2, 4, 4), 0.25, np.float32)}),
                ("f", {"type": "Flatten", "start_dim": np.int64(0), "end_dim": np.int64(-1)}),
                ("a", {"type": "Affine", "weight": np.ones((10, 32), np.float32),
                       "bias": np.zeros(10, np.float32)}),
                ("i", {"type": "IF", "r": np.ones(10), "v_threshold": np.ones(10)})]
    return [("a", {"type": "Linear", "weight": np.ones((10, 64), np.float32)}),
            ("t", {"type": "Threshold", "threshold": f(0.5)}),
            ("b", {"type": "Affine", "weight": np.ones((10, 10), np.float32),
                   "bias": np.zeros(10, np.float32)}),
            ("l", {"type": "LIF", "tau": f(2e-3), "r": f(1.0), "v_leak": f(0.0),
                   "v_threshold": f(1.0), "v_reset": f(0.0)}),
            ("q", {"type": "LI", "tau": np.full(10, 2e-3), "r": np.ones(10),
                   "v_leak": np.zeros(10)}),
            ("n", {"type": "I", "r": np.ones(10)})]


@st.composite
def nir_mutants(draw):
    """A valid graph with a few fields replaced, removed or added."""
    image = draw(st.booleans())
    chain = _valid_chain(image)
    nodes = {"input": {"type": "Input", "shape": np.array([1, 8, 8] if image else [64])},
             **dict(chain), "output": {"type": "Output", "shape": np.array([10])}}
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(sorted(nodes)))
        node = nodes[name]
        how = draw(st.sampled_from(["set", "drop", "add"]))
        key = draw(st.sampled_from(sorted(node) if how != "add" else NIR_KEYS))
        if how == "drop" and key != "type":
            node.pop(key)
        elif key != "type" or draw(st.booleans()):
            node[key] = _small_values(draw) if key != "type" else draw(st.sampled_from(NIR_TYPES))
    order = ["input", *[n for n, _ in chain], "output"]
    return {"type": "NIRGraph", "nodes": nodes,
            "edges": np.array(list(zip(order, order[1:])), dtype=object),
            "metadata": {"dt": np.float64(1e-3)}}


@st.composite
def nir_trees(draw):
    """The "node" group of a NIR file: a graph of random nodes and edges, often a chain that
    starts from a valid Input so that a reader gets past the first checks."""
    n = draw(st.integers(0, 5))
    names = [f"n{i}" for i in range(n)]
    nodes = {"input": {"type": "Input",
                       "shape": draw(st.sampled_from([np.array([1, 8, 8]), np.array([64]),
                                                      np.array([4]), np.array([0]),
                                                      np.array([3, 4])]))},
             "output": {"type": "Output", "shape": np.array([10])}}
    for name in names:
        node = {"type": draw(st.sampled_from(NIR_TYPES))}
        for key in draw(st.lists(st.sampled_from(NIR_KEYS), max_size=6, unique=True)):
            node[key] = _small_values(draw)
        if draw(st.booleans()):
            node["metadata"] = {"edgeprune.layer": {"type": draw(st.sampled_from(
                ["lif", "cuba_lif", "decay_lif", "li", "conv2d", "nope"])),
                "neuron": {"beta": _small_values(draw)}}}
        nodes[name] = node
    chain = ["input", *names, "output"]
    edges = [(a, b) for a, b in zip(chain, chain[1:])]
    if draw(st.booleans()):
        edges += draw(st.lists(st.tuples(st.sampled_from(chain + ["ghost"]),
                                         st.sampled_from(chain)), max_size=2))
    tree = {"type": draw(st.sampled_from(["NIRGraph", "NIRGraph", "Affine"])), "nodes": nodes,
            "edges": np.array(edges, dtype=object) if edges else np.zeros((0, 2), object),
            "metadata": draw(st.sampled_from([{}, {"dt": np.float64(1e-3)},
                                              {"producer": "snntorch"}, {"dt": "x"},
                                              {"convention": "edgeprune", "dt": np.float64(1.0)}]))}
    if draw(st.integers(0, 9)) == 0:
        del tree[draw(st.sampled_from(["nodes", "edges", "type"]))]
    return tree


def _write_h5(group, tree: dict) -> None:
    import h5py

    for key, v in tree.items():
        if isinstance(v, dict):
            _write_h5(group.create_group(key), v)
        elif isinstance(v, str):
            group[key] = v.replace("\x00", "")  # HDF5 strings hold no NUL
        elif isinstance(v, np.ndarray) and v.dtype == object:
            group.create_dataset(key, data=np.array([str(x).encode() for x in v.ravel()],
                                                    dtype="S").reshape(v.shape)
                                 if v.size else np.zeros((0, 2), "S1"))
        else:
            arr = np.asarray(v)
            if arr.dtype.kind == "U":  # HDF5 stores bytes: UTF-8, as h5py writes str
                arr = np.array([x.replace("\x00", "").encode("utf-8") for x in arr.ravel()],
                               dtype=object).reshape(
                    arr.shape) if arr.size else np.zeros(arr.shape, "S1")
            if arr.dtype.kind == "c":
                arr = arr.real
            if arr.dtype == object:
                group.create_dataset(key, data=arr, dtype=h5py.string_dtype())
            else:
                group.create_dataset(key, data=arr)


@settings(max_examples=60 * SCALE, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.one_of(nir_trees(), nir_mutants()), st.sampled_from([None, 1e-3, 1e-4, 1.0]),
       st.sampled_from([None, "nir", "snntorch", "edgeprune"]))
def test_nir_reader(tmp_path, tree, dt, convention):
    """A hostile .nir file: read (and then built and run) or refused with one line."""
    import h5py

    import pipeline
    from edgeprune.artifacts import Store
    from edgeprune.config import DataConfig, ImportConfig

    path = tmp_path / "m.nir"
    with h5py.File(path, "w") as f:
        _write_h5(f.create_group("node"), tree)
    cfg = ImportConfig(timesteps=2, dt=dt, convention=convention)
    _refused_or_read(pipeline.import_model, Store(tmp_path / "runs"), None, path, cfg,
                     DataConfig("none"))
    assert not list((tmp_path / "runs").glob("*.tmp*"))  # nothing half-written


@FUZZ
@given(st.binary(max_size=600), st.booleans())
def test_nir_reader_on_random_and_damaged_bytes(tmp_path, blob, damage_a_real_file):
    from edgeprune.importers import nirfile

    path = tmp_path / "m.nir"
    if damage_a_real_file:
        import h5py

        with h5py.File(path, "w") as f:
            _write_h5(f.create_group("node"), {"type": "NIRGraph", "nodes": {
                "input": {"type": "Input", "shape": np.array([4])}}})
        raw = bytearray(path.read_bytes())
        for i, b in enumerate(blob[:64]):
            raw[(i * 97 + b) % len(raw)] ^= b or 1
        path.write_bytes(bytes(raw))
    else:
        path.write_bytes(blob)
    _refused_or_read(nirfile.load, path, 1e-3)
