"""Signed bundles: an Ed25519 signature over the manifest, which holds every file's sha256.

    malm bundle keygen --out release            # release.key (private, 0600) + release.pub
    malm bundle sign bundle/ --key release.key  # writes bundle/manifest.sig
    Retriever.load("bundle/", trusted_keys=["release.pub"])   # or malm query --trusted-key release.pub

`manifest.sig` sits beside `manifest.json` (JSON, see docs/bundle-format.md "Signature"):

    {"format": "malm-bundle-signature", "version": 1, "manifest_sha256": HEX,
     "signatures": [{"algorithm": "ed25519", "key_id": HEX, "signature": BASE64}]}

Each signature is over the bytes `b"malm-bundle-manifest-v1\\n" + sha256(manifest.json bytes).hexdigest()`,
so it covers the manifest exactly as stored (no canonical JSON to get wrong) and, through its `files`
table, every file; the prefix keeps a signature made for anything else from passing as one of ours. A
key's id is the sha256 of its raw 32-byte public key. The cryptography is `cryptography`'s (OpenSSL).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from malm._atomic import write_text_atomic
from malm.bundle import MANIFEST, read_manifest, verify
from malm.errors import BundleError, MalmError

SIGNATURE = "manifest.sig"
SIG_FORMAT = "malm-bundle-signature"
SIG_VERSION = 1
_DOMAIN = b"malm-bundle-manifest-v1\n"
MAX_SIG_BYTES = 64 << 10
REQUIRE_ENV = "MALM_REQUIRE_SIGNATURE"
KEYS_ENV = "MALM_TRUSTED_KEYS"

TrustedKey = str | os.PathLike[str] | bytes | Any  # a .pub PEM path, raw 32 bytes, or an Ed25519PublicKey


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as e:  # pragma: no cover - a base dependency; a broken install says so clearly
        raise MalmError(f"signed bundles need the 'cryptography' package ({e}); pip install cryptography") from None
    return ed25519


def _message(manifest_bytes: bytes) -> bytes:
    return _DOMAIN + hashlib.sha256(manifest_bytes).hexdigest().encode()


def key_id(public_key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def load_public_key(key: TrustedKey) -> Any:
    """An Ed25519 public key from a PEM file (`malm bundle keygen`'s .pub), raw 32 bytes, or a key object."""
    ed25519 = _crypto()
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, bytes):
        if len(key) != 32:
            raise MalmError(f"trusted key: raw Ed25519 public keys have 32 bytes, got {len(key)}")
        return ed25519.Ed25519PublicKey.from_public_bytes(key)
    from cryptography.hazmat.primitives import serialization

    path = Path(key)
    try:
        pub = serialization.load_pem_public_key(path.read_bytes()[:MAX_SIG_BYTES])
    except OSError as e:
        raise MalmError(f"trusted key {path}: cannot be read ({e.strerror})") from None
    except ValueError:
        raise MalmError(f"trusted key {path}: not a PEM public key (use the .pub from malm bundle keygen)") from None
    if not isinstance(pub, ed25519.Ed25519PublicKey):
        raise MalmError(f"trusted key {path}: not an Ed25519 key ({type(pub).__name__})")
    return pub


def keygen(out: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write a new key pair: `OUT.key` (PKCS#8 PEM, mode 0600: keep it off devices) and `OUT.pub`."""
    from cryptography.hazmat.primitives import serialization

    ed25519 = _crypto()
    base = Path(out)
    priv_path, pub_path = base.with_name(base.name + ".key"), base.with_name(base.name + ".pub")
    for p in (priv_path, pub_path):
        if p.exists():
            raise MalmError(f"{p} already exists; not overwriting a key")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv_path, pub_path


def _load_private_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization

    ed25519 = _crypto()
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as e:
        raise MalmError(f"signing key {path}: cannot be read ({e.strerror})") from None
    except (ValueError, TypeError) as e:
        raise MalmError(f"signing key {path}: not an unencrypted PEM private key ({e})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise MalmError(f"signing key {path}: not an Ed25519 key ({type(key).__name__})")
    return key


def sign_bundle(root: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> tuple[Path, str]:
    """Hash every file (a signature vouches for the files as they are now), then sign the manifest's bytes.
    Returns (manifest.sig, the key's id)."""
    root = Path(root)
    key = _load_private_key(Path(key_path))
    data = (root / MANIFEST).read_bytes() if (root / MANIFEST).is_file() else b""
    verify(root, read_manifest(root, data) if data else read_manifest(root))
    kid = key_id(key.public_key())
    sig = {"format": SIG_FORMAT, "version": SIG_VERSION, "manifest_sha256": hashlib.sha256(data).hexdigest(),
           "signatures": [{"algorithm": "ed25519", "key_id": kid,
                           "signature": base64.b64encode(key.sign(_message(data))).decode()}]}
    if (root / MANIFEST).read_bytes() != data:
        raise BundleError(f"bundle {root}: {MANIFEST} changed while signing; sign it again")
    out = root / SIGNATURE
    write_text_atomic(out, json.dumps(sig, indent=1) + "\n")
    return out, kid


@dataclass(frozen=True)
class TrustPolicy:
    """Which signatures a load accepts. `required`: an unsigned bundle is refused (a wrongly signed one always is)."""

    keys: tuple[Any, ...] = ()  # Ed25519PublicKey objects
    required: bool = False

    @classmethod
    def resolve(cls, trusted_keys: Iterable[TrustedKey] | None = None,
                require_signature: bool | None = None) -> TrustPolicy:
        """Keys given here plus $MALM_TRUSTED_KEYS (paths, os.pathsep-separated). Required when asked, when
        $MALM_REQUIRE_SIGNATURE=1, or by default when any trusted key is given."""
        given = list(trusted_keys or [])
        given += [p for p in os.environ.get(KEYS_ENV, "").split(os.pathsep) if p]
        keys = tuple(load_public_key(k) for k in given)
        env = os.environ.get(REQUIRE_ENV, "").strip().lower() in ("1", "true", "yes", "on")
        required = require_signature if require_signature is not None else (env or bool(keys))
        if required and not keys:
            raise MalmError("a bundle signature is required but no trusted key was given "
                            f"(trusted_keys=, --trusted-key or ${KEYS_ENV})")
        return cls(keys, bool(required))

    @property
    def active(self) -> bool:
        return bool(self.keys) or self.required


def check_signature(root: Path, manifest_bytes: bytes, policy: TrustPolicy) -> str | None:
    """The id of the trusted key that signed exactly `manifest_bytes`, or None (unsigned and not required).
    Refuses, with one line, an unsigned bundle when required and any signature that does not verify."""
    if not policy.active:
        return None
    path = root / SIGNATURE
    if not path.is_file():
        if policy.required:
            raise BundleError(f"bundle {root}: is not signed (no {SIGNATURE}) and a signature is required")
        return None
    try:
        sig = json.loads(path.read_bytes()[:MAX_SIG_BYTES].decode("utf-8"))
        entries = sig["signatures"] if sig.get("format") == SIG_FORMAT else None
        if sig.get("version") != SIG_VERSION or not isinstance(entries, list):
            raise ValueError("unknown format or version")
        parsed = [(str(e["key_id"]), base64.b64decode(e["signature"], validate=True)) for e in entries
                  if isinstance(e, dict) and e.get("algorithm") == "ed25519"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise BundleError(f"bundle {root}: {SIGNATURE} is not a malm bundle signature ({e})") from None
    from cryptography.exceptions import InvalidSignature

    trusted = {key_id(k): k for k in policy.keys}
    message = _message(manifest_bytes)
    for kid, signature in parsed:
        key = trusted.get(kid)
        if key is None:
            continue
        try:
            key.verify(signature, message)
            return kid
        except InvalidSignature:
            raise BundleError(f"bundle {root}: {SIGNATURE} does not match manifest.json (changed after signing, "
                              f"or forged; key {kid[:16]})") from None
    ids = ", ".join(kid[:16] for kid, _ in parsed) or "none"
    raise BundleError(f"bundle {root}: signed by a key that is not trusted (key ids {ids}; trusted "
                      f"{', '.join(k[:16] for k in trusted) or 'none'})")
