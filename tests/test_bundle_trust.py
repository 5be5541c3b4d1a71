"""Bundles from elsewhere: signed bundles (`package --sign`, `verify --trust`), no native code
from an untrusted bundle (its C runner is never executed; `--rebuild-c` compiles the bundled
sources here), plain names on the package side, manifests whose verdict was edited, and
`verify` within memory and disk bounds on hostile archives (each run in a subprocess under
RLIMIT_AS, with TMPDIR and the working directory checked afterwards)."""
import gzip
import hashlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from .conftest import ROOT, run_cli, small_ticket

HAVE_CC = any(shutil.which(c) for c in ("cc", "gcc", "clang"))
CC = HAVE_CC or os.environ.get("EDGEPRUNE_REQUIRE_CC") == "1"
HAVE_SSH_KEYGEN = shutil.which("ssh-keygen") is not None
needs_keygen = pytest.mark.skipif(not HAVE_SSH_KEYGEN,
                                  reason="ssh-keygen is not installed (apt-get install "
                                  "openssh-client)")
needs_cc = pytest.mark.skipif(not CC, reason="no C compiler installed (apt-get install gcc)")
# A normal `verify --trust` of the fixture bundle (ONNX Runtime and the C runner in child
# processes, which inherit the cap) ran in 250 MB of address space and failed in 200 MB
# (measured with one BLAS thread); every test here runs verify under 4x that. Before the
# bounds, the zero bomb took 1.64 GB and the PAX-header bomb 941 MB of RSS.
MEMORY_CAP = 1024 ** 3
GiB = 1024 ** 3
ORT_SESSION_FILE = ".ses"  # libonnxruntime's own id file in TMPDIR, written by any session


# -- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def validated(tmp_path_factory, digits_model):
    """A trained-digits lineage (imp ticket at 50%, retrained, exported) validated against
    PyTorch on x86_64 and, with a compiler, c-x86_64. Returns the validate artifact."""
    import pipeline
    from edgeprune.config import ValidateConfig

    store, export, ticket = small_ticket(tmp_path_factory.mktemp("trust-runs"), digits_model)
    targets = "x86_64,c-x86_64" if CC else "x86_64"
    val, _ = pipeline.validate(store, export.path / "model.onnx",
                               ValidateConfig(target=targets, limit=16, dense=False,
                                              latency_budget_ms=1000),
                               against=ticket.path / "model.pt")
    return val


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Two throwaway ed25519 key pairs: the packager's and someone else's."""
    if not HAVE_SSH_KEYGEN:
        pytest.skip("ssh-keygen is not installed (apt-get install openssh-client)")
    d = tmp_path_factory.mktemp("keys")
    for name in ("packager", "other"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f",
                        str(d / name)], check=True, timeout=60)
    return d


def _package(val, out: Path, *extra) -> Path:
    r = run_cli("package", val.path, "--out", out, "--json", *extra)
    assert r.returncode == 0, r.stderr
    return Path(json.loads(r.stdout)["bundle"])


@pytest.fixture(scope="module")
def signed(validated, keys, tmp_path_factory):
    return _package(validated, tmp_path_factory.mktemp("signed"), "--sign", keys / "packager")


@pytest.fixture(scope="module")
def unsigned(validated, tmp_path_factory):
    return _package(validated, tmp_path_factory.mktemp("unsigned"))


def _members(path: Path) -> tuple[str, dict[str, bytes]]:
    with tarfile.open(path) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    top = next(iter(files)).split("/")[0]
    return top, {n.split("/", 1)[1]: b for n, b in files.items()}


def _rehashed(path: Path, out: Path, changes: dict[str, bytes], sign_with: Path | None = None
              ) -> Path:
    """A copy of the bundle with `changes` applied and every checksum recomputed, as anyone
    can: the members' sha256 and sizes in the manifest and the manifest's own sha256. The
    old signature is kept, or replaced by one made with `sign_with`."""
    from targets import archive, bundle, signing

    top, files = _members(path)
    files.update(changes)
    manifest = json.loads(files.pop(bundle.MANIFEST))
    manifest["files"] = {n: {"sha256": hashlib.sha256(b).hexdigest(), "bytes": len(b)}
                         for n, b in files.items() if n != bundle.SIGNATURE}
    files[bundle.MANIFEST] = bundle._manifest_bytes(manifest)
    if sign_with is not None:
        files[bundle.SIGNATURE] = signing.sign(files[bundle.MANIFEST], sign_with)
    out.write_bytes(archive.pack(top, files))
    return out


def _verify(bundle: Path, *args, tmp: Path, cap: int = MEMORY_CAP, timeout: int = 300):
    """`edgeprune verify` in a subprocess with its address space capped at `cap`, TMPDIR and
    the working directory fresh folders under `tmp`; asserts nothing was left in either."""
    scratch, cwd = tmp / "tmpdir", tmp / "cwd"
    for d in (scratch, cwd):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    r = subprocess.run([sys.executable, "-m", "cli", "verify", str(bundle), *map(str, args)],
                       cwd=cwd, capture_output=True, text=True, timeout=timeout, preexec_fn=limit,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(scratch),
                            "OPENBLAS_NUM_THREADS": "1"})
    left = [p for p in scratch.iterdir() if p.name != ORT_SESSION_FILE]
    assert left == [] and list(cwd.iterdir()) == [], r.stderr[-2000:]
    return r


def _one_line(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeprune: error: "), r.stderr[-3000:]
    assert "Traceback" not in r.stderr and len(lines[0]) < 1000, lines[0][:2000]
    return lines[0]


def _fingerprint(pub: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)],
                         capture_output=True, text=True, check=True).stdout
    return out.split()[1]


# -- signed bundles ----------------------------------------------------------------------------

@needs_keygen
def test_signed_bundle_verifies_with_trust(signed, keys, tmp_path):
    from targets import bundle

    top, files = _members(signed)
    with tarfile.open(signed) as tar:  # the manifest and its signature lead the archive
        assert [m.name.split("/", 1)[1] for m in tar.getmembers()[:2]] == list(bundle.HEAD)
    assert files[bundle.SIGNATURE].startswith(b"-----BEGIN SSH SIGNATURE-----")
    r = _verify(signed, "--trust", keys / "packager.pub", "--json", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["passed"] and out["signed_by"] == _fingerprint(keys / "packager.pub")
    ran = {(x["target"], x["file"]) for x in out["runs"]}
    assert ("x86_64", "model.onnx") in ran
    if CC:  # trusted: the bundled runner that validation built is what runs
        assert ("c-x86_64", "c/c-x86_64/runner") in ran and out["skipped"] == []


@needs_keygen
def test_wrong_or_missing_signature_fails_with_one_line(signed, unsigned, keys, tmp_path):
    r = _verify(signed, "--trust", keys / "other.pub", tmp=tmp_path)
    line = _one_line(r)
    assert r.returncode == 1 and _fingerprint(keys / "packager.pub") in line, line
    assert "does not hold" in line
    r = _verify(unsigned, "--trust", keys / "packager.pub", tmp=tmp_path)
    assert r.returncode == 1 and "is not signed" in _one_line(r)


@needs_keygen
def test_tampered_but_rehashed_bundle_fails_signature(signed, keys, tmp_path):
    _, files = _members(signed)
    card = files["MODEL_CARD.md"].replace(b"digits", b"imagenet")
    assert card != files["MODEL_CARD.md"]
    bad = _rehashed(signed, tmp_path / "bad.tar.gz", {"MODEL_CARD.md": card})
    # every checksum agrees: without --trust the change goes unnoticed ...
    r = _verify(bad, "--target", "x86_64", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    # ... with it, the signature no longer fits the re-hashed manifest
    r = _verify(bad, "--trust", keys / "packager.pub", tmp=tmp_path)
    line = _one_line(r)
    assert r.returncode == 1 and "signature of manifest.json does not match" in line, line


@needs_keygen
def test_bad_keys_are_bad_input(validated, signed, keys, tmp_path, monkeypatch):
    junk = tmp_path / "junk"
    junk.write_text("not a key\n")
    for args in (("--sign", junk), ("--sign", tmp_path / "absent")):
        r = run_cli("package", validated.path, "--out", tmp_path / "p", *args)
        assert r.returncode == 2 and "signing key" in _one_line(r)
        assert not (tmp_path / "p").exists() or not list((tmp_path / "p").glob("package-*"))
    for key, needle in ((junk, "not an OpenSSH public key"), (keys / "packager", "private key"),
                        (tmp_path / "absent.pub", "does not exist")):
        r = _verify(signed, "--trust", key, tmp=tmp_path)
        assert r.returncode == 2 and needle in _one_line(r)
    # no ssh-keygen on PATH: exit 2 naming the package that has it
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    r = _verify(signed, "--trust", keys / "packager.pub", tmp=tmp_path)
    assert r.returncode == 2 and "openssh-client" in _one_line(r)
    r = run_cli("package", validated.path, "--out", tmp_path / "p", "--sign",
                keys / "packager")
    assert r.returncode == 2 and "openssh-client" in _one_line(r)


# -- no foreign code by default ------------------------------------------------------------------

@needs_cc
def test_unsigned_runner_is_not_executed(unsigned, request, tmp_path):
    marker = tmp_path / "runner-ran"
    script = f"#!/bin/sh\ntouch {marker}\n".encode()
    evil = _rehashed(unsigned, tmp_path / "evil.tar.gz", {"c/c-x86_64/runner": script})
    # by default the C target is left out, saying why; ONNX Runtime still verifies
    r = _verify(evil, "--json", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [s["target"] for s in out["skipped"]] == ["c-x86_64"]
    assert {x["target"] for x in out["runs"]} == {"x86_64"} and not marker.exists()
    assert "model.onnx" in {x["file"] for x in out["runs"]}
    # named, it is refused with one line saying how to proceed
    r = _verify(evil, "--target", "c-x86_64", tmp=tmp_path)
    line = _one_line(r)
    assert r.returncode == 2 and "--trust" in line and "--rebuild-c" in line, line
    assert not marker.exists()
    # --rebuild-c compiles the bundled sources here: passes, the bundled runner never runs
    r = _verify(evil, "--target", "c-x86_64", "--rebuild-c", "--json", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    runs = json.loads(r.stdout)["runs"]
    assert [(x["target"], x["passed"], x["agreement"]) for x in runs] == [("c-x86_64", True, 1.0)]
    assert not marker.exists()
    # the control: signed by a key the user trusts, the bundled runner does run
    if HAVE_SSH_KEYGEN:
        keys = request.getfixturevalue("keys")
        trusted = _rehashed(unsigned, tmp_path / "trusted.tar.gz",
                            {"c/c-x86_64/runner": script}, sign_with=keys / "packager")
        r = _verify(trusted, "--target", "c-x86_64", "--trust", keys / "packager.pub",
                    tmp=tmp_path)
        assert marker.exists() and r.returncode != 0  # it ran, and its output is no logits


# -- package trusts no edited manifest -----------------------------------------------------------

def _copy_artifact(src: Path, run_dir: Path) -> Path:
    dst = run_dir / src.name
    shutil.copytree(src, dst)
    return dst


def _edit_manifest(folder: Path, edit) -> None:
    """Edit a manifest the way someone who knows the format would: resealed, so the artifact's
    own seal passes and what is left to catch the edit is the package's re-derivation."""
    from edgeprune.artifacts import seal

    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    edit(m)
    m["seal"] = seal(m)
    path.write_text(json.dumps(m, indent=2, sort_keys=True))


def test_flipped_passed_is_not_packaged(validated, tmp_path):
    """A failed validation whose manifest says passed: refused, with one line."""
    run_dir = tmp_path / "runs"
    shutil.copytree(validated.path.parent, run_dir,
                    ignore=shutil.ignore_patterns("package-*", ".locks"))
    val = run_dir / validated.path.name
    report = json.loads((val / "report.json").read_text())
    report["passed"] = False
    report["targets"][0]["passed"] = False
    report["targets"][0]["gates"][0]["status"] = "fail"
    data = (json.dumps(report) + "\n").encode()
    (val / "report.json").write_bytes(data)
    _edit_manifest(val, lambda m: (m["metrics"].update(passed=False), m["files"].update(
        {"report.json": {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}})))
    # honest: a failed validation is not packaged (exit 1)
    r = run_cli("package", val, "--out", tmp_path / "out")
    assert r.returncode == 1, r.stderr
    # edited: passed flipped by hand, the report's gates say otherwise (exit 2, one line)
    _edit_manifest(val, lambda m: m["metrics"].update(passed=True))
    r = run_cli("package", val, "--out", tmp_path / "out")
    line = _one_line(r)
    assert r.returncode == 2 and "gates in its report.json say fail" in line, line
    assert not list((tmp_path / "out").glob("package-*"))


def test_manifest_file_names_must_be_plain(validated, tmp_path):
    """An export manifest listing '../../secret.onnx' never reaches outside its folder."""
    run_dir = tmp_path / "runs"
    shutil.copytree(validated.path.parent, run_dir,
                    ignore=shutil.ignore_patterns("package-*", ".locks"))
    secret = tmp_path / "secret.onnx"
    secret.write_bytes(b"secret")
    export = next(run_dir.glob("export-*"))
    entry = {"sha256": hashlib.sha256(b"secret").hexdigest(), "bytes": 6}
    rel = os.path.relpath(secret, export)
    _edit_manifest(export, lambda m: m["files"].update({rel: entry}))
    r = run_cli("package", run_dir / validated.path.name, "--out", tmp_path / "out")
    # the validation recorded the export's seal: the edit is caught there first ...
    line = _one_line(r)
    assert r.returncode == 2 and "changed after validate" in line, line
    # ... and with the whole chain below it resealed, by the name check itself
    new_seal = json.loads((export / "manifest.json").read_text())["seal"]
    for child in run_dir.glob("validate-*"):
        _edit_manifest(child, lambda m: m["input_seals"].update(
            {k: new_seal for k in m["input_seals"] if export.name.endswith(k)}))
    r = run_cli("package", run_dir / validated.path.name, "--out", tmp_path / "out")
    line = _one_line(r)
    assert r.returncode == 2 and "not a plain file name" in line and "secret" in line, line
    assert not list((tmp_path / "out").glob("package-*"))


# -- bounded verify on hostile archives ----------------------------------------------------------

def _blocks(info: tarfile.TarInfo, data: bytes = b"") -> bytes:
    """One tar member as bytes: its header block(s), then `data` padded to 512."""
    info.size = len(data)
    return info.tobuf(tarfile.PAX_FORMAT) + data + b"\0" * (-len(data) % 512)


def _bomb(path: Path, manifest: bytes, header: tarfile.TarInfo, n: int, fill: bytes) -> Path:
    """A .tar.gz: the manifest, then `header` followed by `n` bytes of `fill`. Written as
    concatenated gzip members (which gzip readers join), so that a GiB costs a moment."""
    chunk = 64 * 1024 ** 2
    whole = gzip.compress(fill * chunk, compresslevel=9)
    with path.open("wb") as f:
        f.write(gzip.compress(_blocks(tarfile.TarInfo("b/manifest.json"), manifest)
                              + header.tobuf(tarfile.PAX_FORMAT)))
        for _ in range(n // chunk):
            f.write(whole)
        f.write(gzip.compress(fill * (n % chunk) + b"\0" * (-n % 512 + 1024)))
    return path


def _manifest(files: dict[str, bytes]) -> bytes:
    """A self-consistent bundle manifest declaring `files`."""
    from targets import bundle

    return bundle._manifest_bytes({"schema": bundle.SCHEMA, "name": "b", "targets": [],
                                   "files": {n: {"sha256": hashlib.sha256(b).hexdigest(),
                                                 "bytes": len(b)} for n, b in files.items()}})


def _hostile(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]],
             manifest: bytes | None = None) -> Path:
    """A .tar.gz whose first member is `manifest` (a valid empty one by default), then
    `members` (TarInfo, content or None for a folder)."""
    manifest = _manifest({}) if manifest is None else manifest
    with gzip.open(path, "wb", compresslevel=1) as gz, \
            tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for info, content in [(tarfile.TarInfo("b/manifest.json"), manifest), *members]:
            if content is not None:
                info.size = len(content)
            tar.addfile(info, None if content is None else io.BytesIO(content))
    return path


def _file(name: str, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    return info


def test_zero_bomb_member_is_never_inflated(tmp_path):
    size = 3 * GiB // 2
    big = _file("b/model.onnx", size)
    for manifest, needle in ((_manifest({}), "model.onnx is not listed in manifest.json"),
                             (_manifest({"model.onnx": b"tiny"}),
                              f"model.onnx holds {size:,} bytes, not the 4")):
        bomb = _bomb(tmp_path / "bomb.tar.gz", manifest, big, size, b"\0")
        assert bomb.stat().st_size < 3 * 1024 ** 2
        r = _verify(bomb, tmp=tmp_path, timeout=120)
        line = _one_line(r)
        assert r.returncode == 1 and needle in line, line


def test_declared_total_over_the_cap_is_refused(tmp_path):
    from targets import archive, bundle

    doc = {"schema": bundle.SCHEMA, "name": "b", "targets": [], "files": {"model.onnx": {
        "sha256": "1" * 64, "bytes": archive.MAX_TOTAL_BYTES + 1}}}
    forged = _hostile(tmp_path / "f.tar.gz", [], bundle._manifest_bytes(doc))
    r = _verify(forged, tmp=tmp_path)
    assert r.returncode == 2 and "declares" in _one_line(r)


def test_pax_header_bomb_is_refused_before_it_is_read(tmp_path):
    n = 900 * 1024 ** 2
    pax = tarfile.TarInfo("b/././@PaxHeader")
    pax.type, pax.size = tarfile.XHDTYPE, n
    bomb = _bomb(tmp_path / "pax.tar.gz", _manifest({}), pax, n, b"a")
    assert bomb.stat().st_size < 2 * 1024 ** 2
    r = _verify(bomb, tmp=tmp_path, timeout=120)
    line = _one_line(r)
    assert r.returncode == 2 and f"extended (PAX/GNU) header of {n:,} bytes" in line, line


def _empties(n: int, kind: bytes) -> bytes:
    """`n` ustar headers of empty members b/m0, b/m1, ... of type `kind` (b"0" files, b"5"
    folders), made from one template: tarfile takes seconds for 200k."""
    template = bytearray(tarfile.TarInfo("b/x").tobuf(tarfile.USTAR_FORMAT))
    template[156:157] = kind
    out = bytearray()
    for i in range(n):
        block = bytearray(template)
        name = f"b/m{i}".encode()
        block[:100] = name + bytes(100 - len(name))
        block[148:156] = b" " * 8
        block[148:156] = b"%06o\0 " % sum(block)
        out += block
    return bytes(out)


def test_many_members_give_a_short_line(tmp_path):
    for kind, code, needle in ((b"0", 1, "m0 is not listed in manifest.json"),
                               (b"5", 2, "more than 4,096 members")):
        path = tmp_path / "many.tar.gz"
        path.write_bytes(gzip.compress(_blocks(tarfile.TarInfo("b/manifest.json"),
                                               _manifest({})) + _empties(200_000, kind)
                                       + bytes(1024), compresslevel=1))
        r = _verify(path, tmp=tmp_path)
        assert r.returncode == code and needle in _one_line(r)


@pytest.mark.parametrize("members, needle", [
    ([(_file("b/" + "n" * 298), b"x")], "300 characters long"),
    ([(_file("b/model.onnx"), b"x"), (_file("b/model.onnx/inner"), b"y")],
     "both a file and a folder"),
    ([(_file("b/model\x1b[2J.onnx"), b"x")], "characters other than"),
    ([(_file("b/a\\..\\..\\evil"), b"x")], "more than one path component"),
])
def test_odd_member_names_are_refused(tmp_path, members, needle):
    declared = _manifest({i.name.split("/", 1)[1]: b for i, b in members})  # all listed
    r = _verify(_hostile(tmp_path / "odd.tar.gz", members, declared), tmp=tmp_path)
    assert r.returncode == 2 and needle in _one_line(r)


def test_a_killed_verify_leaves_nothing_the_next_one_keeps(unsigned, tmp_path):
    """SIGKILL skips every cleanup: the folder a killed verify left in TMPDIR is removed by the
    next verify (its name carries the dead process's id); a live process's folder is kept."""
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    left = scratch / f"edgeprune-verify-{dead.pid}-abc"
    (left / "c").mkdir(parents=True)
    (left / "c" / "model.c").write_text("left by a killed verify")
    live = scratch / f"edgeprune-verify-{os.getpid()}-xyz"
    live.mkdir()
    r = subprocess.run([sys.executable, "-m", "cli", "verify", str(unsigned), "--target",
                        "x86_64"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(scratch)})
    assert r.returncode == 0, r.stderr
    assert not left.exists() and live.exists()
    assert not [p for p in scratch.iterdir() if p.name.startswith("edgeprune-") and p != live]
