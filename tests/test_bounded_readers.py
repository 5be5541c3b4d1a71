"""Small hostile files must not cost gigabytes or hang a reader (edgeprune/bounded_read.py).

Each case runs the command a user would, in a subprocess whose address space is capped at CAP
(RLIMIT_AS), and must end with exit 2, one stderr line naming the budget or the kind of file,
and nothing written. CAP is honest: measured with OMP_NUM_THREADS=1 and MALLOC_ARENA_MAX=2 (set
here too), normal runs peak at 0.82 GiB of address space (`train` on an 8x8 .npz or IDX
directory), 1.06 GiB (`export`), 0.78 GiB (`import-model` of a NIR file) and 0.84 GiB (`validate
--reference`); test_unused_npz_member_is_never_read runs a whole `train` under CAP. Before these
readers were bounded, the same files cost 2.2-3.5 GB, or read until memory ran out, or hung."""
import gzip
import os
import pickle
import resource
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from edgeprune.bounded_read import GiB, MiB
from edgeprune.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
CAP = int(1.25 * GiB)
BLOCK = 16 * MiB  # zeros per repeated deflate block


def _capped(*args, timeout=180):
    """The CLI under the address-space cap (and a timeout: a hang fails the test)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (CAP, CAP))

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "MALLOC_ARENA_MAX": "2"}
    return subprocess.run([sys.executable, "-m", "cli", *map(str, args)], cwd=ROOT, env=env,
                          preexec_fn=limit, capture_output=True, text=True, timeout=timeout)


def _refused(r, out: Path, *words):
    assert r.returncode == 2, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr[-3000:]
    for w in words:
        assert w in lines[0], lines[0]
    written = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert not written, written


# -- hostile files, built without spending what they would cost -------------------------------

def _deflated_zeros(prefix: bytes, zeros: int) -> bytes:
    """A raw deflate stream of `prefix` then `zeros` zero bytes (a multiple of BLOCK), made by
    repeating one fully flushed block, so a 3 GiB member is built in milliseconds."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(BLOCK)) + c.flush(zlib.Z_FULL_FLUSH)
    return head + block * (zeros // BLOCK) + b"\x03\x00"  # an empty final block


def _crc_of_zeros(prefix: bytes, zeros: int) -> int:
    crc, chunk = zlib.crc32(prefix), bytes(BLOCK)
    for _ in range(zeros // BLOCK):
        crc = zlib.crc32(chunk, crc)
    return crc


def _write_zip(path: Path, members) -> None:
    """A zip of (name, stored bytes, uncompressed size, method, crc32) members, written by hand
    because zipfile cannot store an already deflated stream."""
    out, central = bytearray(), bytearray()
    for name, data, size, method, crc in members:
        n, offset = name.encode(), len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc, len(data),
                           size, len(n), 0) + n + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, crc,
                               len(data), size, len(n), 0, 0, 0, 0, 0, offset) + n
    path.write_bytes(bytes(out + central + struct.pack(
        "<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(out), 0)))


def _npy(a: np.ndarray) -> bytes:
    from io import BytesIO

    buf = BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _stored(name: str, data: bytes):
    return (name, data, len(data), zipfile.ZIP_STORED, zlib.crc32(data))


def _bomb_member(name: str, prefix: bytes, zeros: int):
    return (name, _deflated_zeros(prefix, zeros), len(prefix) + zeros, zipfile.ZIP_DEFLATED,
            _crc_of_zeros(prefix, zeros))


def _npy_header(shape, dtype=np.uint8) -> bytes:
    from io import BytesIO

    buf = BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.dtype(dtype).str,
                                               "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _digits_members():
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = d.images.astype(np.uint8), d.target
    return [_stored("x_train.npy", _npy(x[:1400])), _stored("y_train.npy", _npy(y[:1400])),
            _stored("x_test.npy", _npy(x[1400:])), _stored("y_test.npy", _npy(y[1400:]))]


def test_crafted_zip_bombs_are_real(tmp_path):
    """The hand-made members read back, through zipfile, as what they declare."""
    path = tmp_path / "small.npz"
    _write_zip(path, [_bomb_member("z.npy", _npy_header((BLOCK // 64, 8, 8)), BLOCK)])
    with np.load(path) as z:
        a = z["z"]
    assert a.shape == (BLOCK // 64, 8, 8) and not a.any()
    assert path.stat().st_size < BLOCK // 500


# -- .npz ---------------------------------------------------------------------------------------

def test_npz_zip_bomb_is_refused_before_it_is_inflated(tmp_path):
    """527 KB that inflated to 3.4 GB: the zip directory's declared size is checked first."""
    zeros = 3 * GiB
    members = _digits_members()
    members[0] = _bomb_member("x_train.npy", _npy_header((zeros // 64, 8, 8)), zeros)
    _write_zip(tmp_path / "bomb.npz", members)
    assert (tmp_path / "bomb.npz").stat().st_size < 4 * MiB  # deflate tops out near 1000:1
    out = tmp_path / "runs"
    r = _capped("train", "--data", tmp_path / "bomb.npz", "--epochs", "1", "--out", out)
    _refused(r, out, "x_train.npy", "declares 3 GiB", "over the 2 GiB budget for a dataset")


def test_npz_header_declaring_more_than_its_member_holds_is_refused(tmp_path):
    """An .npy header is checked against the size the zip declares before numpy allocates the
    shape it names (numpy allocates first, then finds the data short)."""
    from edgeprune import data

    members = _digits_members()
    members[0] = _stored("x_train.npy", _npy_header((1 << 26, 8, 8)) + bytes(64))
    _write_zip(tmp_path / "liar.npz", members)
    with pytest.raises(UserError, match="'x_train': its header declares 4294967296 bytes of "
                                        "data but the zip holds 64"):
        data.load(str(tmp_path / "liar.npz"))


def test_unused_npz_member_is_never_read(tmp_path):
    """A member the dataset does not use (512 MiB in the issue) was inflated anyway: with one
    of 1.5 GiB, more than CAP by itself, a whole `train` now runs under CAP."""
    zeros = 3 * GiB // 2
    _write_zip(tmp_path / "extra.npz", _digits_members() + [
        _bomb_member("unused.npy", _npy_header((zeros,)), zeros)])
    out = tmp_path / "runs"
    r = _capped("train", "--data", tmp_path / "extra.npz", "--epochs", "1", "--train-subset",
                "64", "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert list(out.glob("train-*/model.pt"))


# -- IDX (Fashion-MNIST) ----------------------------------------------------------------------

def _idx(arr: np.ndarray) -> bytes:
    return (bytes([0, 0, 8, arr.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in arr.shape)
            + arr.astype(np.uint8).tobytes())


def _idx_dir(folder: Path, **replace) -> Path:
    """A Fashion-MNIST-style directory of 8x8 digits; `replace` gives a file's raw bytes."""
    from sklearn.datasets import load_digits

    folder.mkdir()
    d = load_digits()
    parts = {"train-images-idx3-ubyte": _idx(d.images[:1400]),
             "train-labels-idx1-ubyte": _idx(d.target[:1400]),
             "t10k-images-idx3-ubyte": _idx(d.images[1400:]),
             "t10k-labels-idx1-ubyte": _idx(d.target[1400:])}
    for name, raw in parts.items():
        (folder / f"{name}.gz").write_bytes(replace.get(name.split("-idx")[0].replace("-", "_"),
                                                        gzip.compress(raw)))
    return folder


def test_idx_gz_bomb_is_streamed_with_a_cap(tmp_path):
    """261 KB that decompressed to 815 MB: a header declaring 1400 images of 8x8, followed by
    2 GiB of zeros (gzip members of 16 MiB of zeros, repeated). Only what the header declares,
    and one byte more, is ever decompressed."""
    zeros = gzip.compress(bytes(BLOCK), 9)
    bomb = gzip.compress(_idx(np.zeros((1400, 8, 8)))) + zeros * (2 * GiB // BLOCK)
    assert len(bomb) < 5 * MiB
    folder = _idx_dir(tmp_path / "idx", train_images=bomb)
    out = tmp_path / "runs"
    r = _capped("train", "--data", f"fashion-mnist:{folder}", "--epochs", "1", "--out", out)
    _refused(r, out, "train-images-idx3-ubyte.gz holds more than the 89616 bytes its header says")


def test_idx_header_over_the_budget_is_refused_before_reading(tmp_path):
    header = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (1 << 22, 32, 32))
    folder = _idx_dir(tmp_path / "idx", train_images=gzip.compress(header + bytes(1024)))
    out = tmp_path / "runs"
    r = _capped("train", "--data", f"fashion-mnist:{folder}", "--epochs", "1", "--out", out)
    _refused(r, out, "declares 4 GiB, over the 2 GiB budget for a dataset")


def test_idx_symlink_to_dev_zero_is_refused(tmp_path):
    """It read until memory ran out."""
    folder = _idx_dir(tmp_path / "idx")
    (folder / "train-images-idx3-ubyte.gz").unlink()
    (folder / "train-images-idx3-ubyte").symlink_to("/dev/zero")
    out = tmp_path / "runs"
    r = _capped("train", "--data", f"fashion-mnist:{folder}", "--epochs", "1", "--out", out)
    _refused(r, out, "train-images-idx3-ubyte is a character device, not a regular file")


@pytest.mark.parametrize("command,name", [("train", "d.npz"), ("import-model", "m.nir"),
                                          ("search", "model.pt")])
def test_fifo_is_refused_not_opened(tmp_path, command, name):
    """`--data` (or a model) that is a FIFO hung forever in open()."""
    fifo = tmp_path / name
    os.mkfifo(fifo)
    out = tmp_path / "runs"
    args = ["--data", fifo] if command == "train" else [fifo]
    r = _capped(command, *args, "--out", out, timeout=60)
    _refused(r, out, f"{fifo} is a FIFO, not a regular file: refused")


def test_artifact_manifest_or_file_that_is_a_fifo_is_refused(tmp_path, digits_model):
    """A FIFO where an artifact's manifest.json or one of its files should be: one line, no hang."""
    import shutil

    folder = tmp_path / "train-abc"
    folder.mkdir()
    os.mkfifo(folder / "manifest.json")
    r = _capped("show", folder, timeout=60)
    assert r.returncode == 2 and "manifest" in r.stderr and "is a FIFO" in r.stderr, r.stderr
    copy = tmp_path / digits_model.path.name
    shutil.copytree(digits_model.path, copy)
    (copy / "model.pt").unlink()
    os.mkfifo(copy / "model.pt")
    out = tmp_path / "runs"
    r = _capped("export", copy / "model.pt", "--out", out, timeout=60)
    _refused(r, out, "is a FIFO, not a regular file: refused")


# -- CIFAR-10 python batches ----------------------------------------------------------------------

class _Reduce:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


@pytest.mark.parametrize("what,words", [
    ("object-array", "refusing a numpy array of object"),
    ("huge-shape", "declares 8 GiB in a file of"),
    ("bytes-of-n", "declares 8 GiB in a file of")])
def test_cifar_batch_declaring_what_it_does_not_hold_is_refused(tmp_path, what, words):
    """Python-pickled CIFAR batches are read by a restricted unpickler (numbers only, no code).
    It also refuses an object array (numpy itself segfaults on one whose pickled list is
    short) and any array or bytes larger than the file."""
    from numpy._core.multiarray import _reconstruct

    if what == "object-array":  # BUILD a billion objects from a list of two: numpy crashed
        data = _Built(_Reduce(_reconstruct, (np.ndarray, (0,), b"b")),
                      (1, (10**9,), np.dtype("O"), False, [1, 2]))
        blob = pickle.dumps({b"data": data, b"labels": [0]}, protocol=2)
    elif what == "huge-shape":
        blob = pickle.dumps({b"data": _Reduce(_reconstruct, (np.ndarray, (1 << 33,), b"B")),
                             b"labels": [0]}, protocol=2)
    else:
        blob = pickle.dumps({b"data": _Reduce(bytes, (1 << 33,)), b"labels": [0]}, protocol=2)
    folder = tmp_path / "cifar"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(blob)
    (folder / "test_batch").write_bytes(blob)
    out = tmp_path / "runs"
    r = _capped("train", "--data", f"cifar10:{folder}", "--epochs", "1", "--out", out)
    _refused(r, out, "is not a CIFAR-10 python batch", words)


class _Built:
    """Pickles as `base` followed by BUILD `state` (an ndarray's __setstate__)."""

    def __init__(self, base, state):
        self.base, self.state = base, state

    def __reduce__(self):
        return self.base.__reduce__() + (self.state,)


# -- model.pt ---------------------------------------------------------------------------------

def _model_pt(path: Path, **spec_changes) -> Path:
    import torch

    from edgeprune import checkpoint
    from edgeprune.models import ModelSpec

    spec = ModelSpec()
    checkpoint.save(path, spec, spec.build())
    if spec_changes:
        blob = torch.load(path, weights_only=True)
        blob["spec"].update(spec_changes)
        torch.save(blob, path)
    return path


def test_model_pt_with_a_deflated_2_gib_record_is_refused(tmp_path):
    """torch's reader inflates a deflated record whole (2.4 GB): the zip directory's sizes are
    checked before torch opens the file."""
    good = _model_pt(tmp_path / "good.pt")
    with zipfile.ZipFile(good) as z:
        members = [_stored(i.filename, z.read(i)) for i in z.infolist()]
    record = next(i for i, m in enumerate(members) if m[0].endswith("/data/0"))
    members[record] = _bomb_member(members[record][0], b"", 2 * GiB)
    folder = tmp_path / "m"
    folder.mkdir()
    _write_zip(folder / "model.pt", members)
    out = tmp_path / "runs"
    r = _capped("search", folder / "model.pt", "--data", "digits", "--out", out)
    _refused(r, out, "data/0' declares 2 GiB", "over the 1 GiB budget for a model.pt")


def test_model_pt_whose_spec_outgrows_its_weights_is_refused_before_building(tmp_path):
    """A spec saying width 150 next to width-1 weights built a 2.2 GB network before the
    weights were compared: the spec's network is now built on the meta device first."""
    folder = tmp_path / "m"
    folder.mkdir()
    _model_pt(folder / "model.pt", width=150.0)
    assert (folder / "model.pt").stat().st_size < 1 * MiB
    out = tmp_path / "runs"
    r = _capped("search", folder / "model.pt", "--data", "digits", "--out", out)
    _refused(r, out, "weights do not fit the convnet architecture", "refused before building")


# -- NIR --------------------------------------------------------------------------------------

def test_nir_fixed_length_string_is_budgeted_by_bytes(tmp_path):
    """One element of `S1073741824` passed the 200M-number budget and cost 3.5 GB."""
    h5py = pytest.importorskip("h5py")
    from edgeprune.models import ModelSpec
    from export.nir_graph import write_nir

    spec = ModelSpec()
    path = tmp_path / "m.nir"
    write_nir(spec.build(), spec.input_shape, 4, path)
    with h5py.File(path, "a") as f:
        f["node"].create_dataset("bomb", shape=(), dtype="S1073741824")
    assert path.stat().st_size < 1 * MiB
    out = tmp_path / "runs"
    r = _capped("import-model", path, "--dt", "1e-3", "--data", "digits", "--out", out)
    _refused(r, out, f"{path}: node/bomb declares 1 GiB",
             "over the 512 MiB budget for a NIR file")


# -- validation references ----------------------------------------------------------------------

def test_reference_npz_bomb_is_refused(tmp_path):
    from edgeprune.models import ModelSpec
    from export.onnx_files import write_onnx

    spec = ModelSpec()
    write_onnx(spec, spec.build(), tmp_path, timesteps=2, step=False)
    zeros = 2 * GiB
    _write_zip(tmp_path / "ref.npz", [
        _bomb_member("inputs.npy", _npy_header((zeros // 256, 1, 8, 8), np.float32), zeros),
        _stored("logits.npy", _npy(np.zeros((8, 10), np.float32)))])
    out = tmp_path / "runs"
    r = _capped("validate", tmp_path / "model.onnx", "--reference", tmp_path / "ref.npz",
                "--out", out)
    _refused(r, out, "inputs.npy", "declares 2 GiB, over the 1 GiB budget for a reference file")


# -- the other budgets, in process --------------------------------------------------------------

def test_zip_directory_over_its_budget_is_refused_before_it_is_parsed(tmp_path):
    """zipfile builds an object per member of the directory (~10x its size in memory)."""
    from edgeprune import data
    from edgeprune.bounded_read import ZIP_DIRECTORY_BYTES

    long_names = [_stored("n" * 60000 + f"{i}.npy", b"") for i in range(80)]
    _write_zip(tmp_path / "wide.npz", _digits_members() + long_names)
    assert ZIP_DIRECTORY_BYTES < 80 * 60000
    with pytest.raises(UserError, match=r"declares a zip directory of 4.\d+ MiB, over the 4 MiB "
                                        "budget"):
        data.load(str(tmp_path / "wide.npz"))


def test_npz_numbers_have_a_budget_as_well_as_bytes(tmp_path):
    """621M uint8 pixels fit the 2 GiB byte budget but would be 2.3 GiB as float32."""
    from edgeprune import data

    zeros = 592 * MiB
    members = _digits_members()
    members[0] = _bomb_member("x_train.npy", _npy_header((zeros // 64, 8, 8)), zeros)
    _write_zip(tmp_path / "many.npz", members)
    with pytest.raises(UserError, match=f"'x_train' declares {zeros:,} numbers, over the "
                                        f"{data.DATASET_NUMBERS:,}-number budget"):
        data.load(str(tmp_path / "many.npz"))


def test_model_pt_pickled_part_has_its_own_budget(tmp_path):
    """torch unpickles data.pkl in Python: 17 MiB of it is refused before torch reads it."""
    import torch

    from edgeprune import checkpoint

    path = _model_pt(tmp_path / "model.pt")
    blob = torch.load(path, weights_only=True)
    blob["notes"] = "x" * (17 * MiB)
    torch.save(blob, path)
    with pytest.raises(UserError, match="data.pkl' declares 17 MiB, over the 16 MiB budget for "
                                        "the pickled part of a model.pt"):
        checkpoint.load(path)


def test_protocol_2_cifar_batch_still_loads(tmp_path):
    """CIFAR-10's own files are protocol-2 pickles (bytes through _codecs.encode, arrays through
    _reconstruct): the restricted unpickler still reads them."""
    from edgeprune import data

    rng = np.random.default_rng(0)
    for name in ("data_batch_1", "test_batch"):
        batch = {b"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8),
                 b"labels": list(range(10)), b"batch_label": b"batch", b"filenames": [b""] * 10}
        (tmp_path / name).write_bytes(pickle.dumps(batch, protocol=2))
    d = data.load(f"cifar10:{tmp_path}")
    assert d.x_train.shape == (10, 3, 32, 32) and d.y_test.tolist() == list(range(10))


def test_tensor_file_that_is_a_symlink_to_a_device_is_refused(tmp_path):
    from edgeprune import tensorfile

    (tmp_path / "w.safetensors").symlink_to("/dev/zero")
    with pytest.raises(UserError, match="is a character device, not a regular file"):
        tensorfile.load(tmp_path / "w.safetensors")
