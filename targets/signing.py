"""Bundle signatures with OpenSSH: `ssh-keygen -Y sign` and `ssh-keygen -Y verify` in the
namespace `edgeprune-bundle`. Keys people already have, no Python package, and it works on a
device (openssh-client is everywhere). Torch-free (stdlib only).

What is signed is a message (a bundle's manifest.json, which lists the sha256 and size of every
other member, so one signature covers them all). `verify` builds an allowed-signers file from
the public keys the user trusts; a signature by another key, or over other bytes, fails.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import shutil
import struct
import subprocess
from pathlib import Path

from edgeprune.errors import GateFailed, UserError

from . import scratch

NAMESPACE = "edgeprune-bundle"
PRINCIPAL = "edgeprune"
TIMEOUT_S = 120
MAX_KEY_FILE = 64 * 1024  # a public key file holds a few lines
MAX_SIGNATURE = 16 * 1024  # an armored SSH signature: about 300 bytes (ed25519) to 2 KiB (RSA)


def _ssh_keygen() -> str:
    found = shutil.which("ssh-keygen")
    if not found:
        raise UserError("signing and checking bundle signatures need OpenSSH's ssh-keygen, "
                        "which is not installed: `apt-get install openssh-client` "
                        "(Debian/Ubuntu)")
    return found


def _run(argv: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, timeout=TIMEOUT_S, **kw)
    except subprocess.TimeoutExpired:
        raise UserError(f"{what}: ssh-keygen took over {TIMEOUT_S} s") from None
    except OSError as e:
        raise UserError(f"{what}: cannot start ssh-keygen: {e.strerror}") from None


def _said(p: subprocess.CompletedProcess) -> str:
    lines = [l for l in (p.stderr + p.stdout).decode(errors="replace").splitlines() if l.strip()]
    return lines[-1].strip()[:200] if lines else f"exit {p.returncode}"


def fingerprint(blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint of a public key blob."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def key_fingerprint(key: Path) -> str:
    """The fingerprint of the signing key `key` (a private key, or a public key whose private
    half ssh-agent holds); a UserError when it is not a key ssh-keygen can read."""
    key = Path(key)
    if not key.is_file():
        raise UserError(f"signing key {key} does not exist or is not a file")
    p = _run([_ssh_keygen(), "-l", "-E", "sha256", "-f", str(key)], f"signing key {key}",
             stdin=subprocess.DEVNULL)
    parts = p.stdout.decode(errors="replace").split()
    if p.returncode != 0 or len(parts) < 2 or not parts[1].startswith("SHA256:"):
        raise UserError(f"signing key {key} is not an OpenSSH key ({_said(p)})")
    return parts[1]


def sign(message: bytes, key: Path) -> bytes:
    """An armored SSH signature of `message` by `key`. An encrypted key asks for its
    passphrase on the terminal, as ssh-keygen does."""
    with scratch.folder("sign") as d:
        msg = Path(d) / "message"
        msg.write_bytes(message)  # a file, so that stdin stays free for a passphrase prompt
        p = _run([_ssh_keygen(), "-Y", "sign", "-q", "-f", str(key), "-n", NAMESPACE, str(msg)],
                 f"signing with {key}")
        sig = msg.with_name("message.sig")
        if p.returncode != 0 or not sig.is_file():
            raise UserError(f"cannot sign with {key}: {_said(p)}")
        return sig.read_bytes()


def _string(blob: bytes, at: int) -> tuple[bytes, int]:
    (n,) = struct.unpack_from(">I", blob, at)
    if at + 4 + n > len(blob):
        raise ValueError("truncated")
    return blob[at + 4:at + 4 + n], at + 4 + n


def trusted_keys(path: Path) -> list[tuple[str, str]]:
    """(key type, base64 blob) of every public key in the file `path` (one per line, as in
    id_ed25519.pub or authorized_keys without options)."""
    path = Path(path)
    try:
        if not path.is_file():
            raise UserError(f"trusted key {path} does not exist or is not a file")
        with path.open("rb") as f:
            raw = f.read(MAX_KEY_FILE + 1)
    except OSError as e:
        raise UserError(f"cannot read trusted key {path}: {e.strerror}") from None
    if len(raw) > MAX_KEY_FILE:
        raise UserError(f"trusted key {path} is over {MAX_KEY_FILE:,} bytes: not a public key")
    text = raw.decode("utf-8", errors="replace")
    if "PRIVATE KEY" in text:
        raise UserError(f"{path} is a private key: --trust takes the signer's public key "
                        "(e.g. id_ed25519.pub)")
    keys = []
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        try:
            blob = base64.b64decode(parts[1], validate=True) if len(parts) > 1 else b""
            kind, _ = _string(blob, 0)
        except (binascii.Error, ValueError, struct.error):
            kind = b""
        if kind.decode(errors="replace") != parts[0]:
            raise UserError(f"trusted key {path} holds a line that is not an OpenSSH public key "
                            "(expected 'ssh-ed25519 AAAA… comment', as in id_ed25519.pub)")
        keys.append((parts[0], parts[1]))
    if not keys:
        raise UserError(f"trusted key {path} holds no public key")
    return keys


def signer(signature: bytes) -> str:
    """The fingerprint of the key that made an armored SSH signature (not yet checked)."""
    text = signature.decode("ascii", errors="replace").strip().splitlines()
    if len(text) < 3 or text[0] != "-----BEGIN SSH SIGNATURE-----" or \
            text[-1] != "-----END SSH SIGNATURE-----":
        raise ValueError("not an armored SSH signature")
    blob = base64.b64decode("".join(text[1:-1]), validate=True)
    if blob[:6] != b"SSHSIG":
        raise ValueError("not an SSHSIG blob")
    key, _ = _string(blob, 10)  # after the magic and the version
    return fingerprint(key)


def verify(message: bytes, signature: bytes, trust: Path, what: str) -> str:
    """The signer's fingerprint when `signature` is a valid signature of `message` by a key
    in the file `trust`; GateFailed (naming `what` was signed) when it is not."""
    keys = trusted_keys(trust)
    tool = _ssh_keygen()
    try:
        by = signer(signature)
    except (ValueError, binascii.Error, struct.error):
        raise GateFailed(f"the signature of {what} is not an OpenSSH signature") from None
    with scratch.folder("trust") as d:
        allowed, sig = Path(d) / "allowed_signers", Path(d) / "signature"
        allowed.write_text("".join(f'{PRINCIPAL} namespaces="{NAMESPACE}" {kind} {b64}\n'
                                   for kind, b64 in keys))
        sig.write_bytes(signature)
        p = _run([tool, "-Y", "verify", "-f", str(allowed), "-I", PRINCIPAL, "-n", NAMESPACE,
                  "-s", str(sig)], f"checking the signature of {what}", input=message)
    if p.returncode == 0:
        return by
    if by not in {fingerprint(base64.b64decode(b64)) for _, b64 in keys}:
        raise GateFailed(f"{what} is signed by key {by}, which {trust} does not hold")
    raise GateFailed(f"the signature of {what} does not match it: {what} or its signature was "
                     f"changed after signing ({_said(p)})")
