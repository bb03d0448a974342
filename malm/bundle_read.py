"""Reading a bundle: `manifest.json` (its size, JSON, version and the shape of every section), the path safety
every file name in it goes through, and what a listed file is (its sha256 and size, its stat identity).

Light on purpose (stdlib only), like malm.bundle, which re-exports these names and holds verification and the
writer (`BundleWriter`). The layout and the manifest's keys: malm.bundle's docstring and docs/bundle-format.md.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PurePosixPath
from typing import Any

from malm._version import __version__
from malm.errors import BundleError, MalmError
from malm.manifest import FORMAT, FORMAT_VERSION, MAX_NAME, Manifest

MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 << 20  # a real manifest is a few kB; more is an attack on the JSON parser's memory


def sha256_path(path: Path) -> tuple[str, int]:
    """sha256 and size of a file, or of a directory tree (relative names + contents, sorted)."""
    h = hashlib.sha256()
    total = 0
    if path.is_dir():
        for sub in _tree_files(path):
            rel = sub.relative_to(path).as_posix().encode()
            h.update(len(rel).to_bytes(8, "little") + rel)
            digest, size = sha256_path(sub)
            h.update(bytes.fromhex(digest))
            total += size
        return h.hexdigest(), total
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            total += len(chunk)
    return h.hexdigest(), total


def _tree_files(path: Path) -> list[Path]:
    """The files under a directory (an .mlpackage), sorted; a symlink inside it is refused: following it
    would hash (and run) bytes from outside the bundle."""
    out = []
    for p in path.rglob("*"):
        if p.is_symlink():
            raise BundleError(f"bundle file {path}: contains a symbolic link ({p.relative_to(path)}), refused")
        if p.is_file():
            out.append(p)
    return sorted(out)


def safe_relpath(root: Path, rel: str) -> Path:
    """Resolve `rel` inside `root`, refusing absolute paths, `..` and links that escape."""
    if not isinstance(rel, str) or any(ord(c) < 32 for c in rel):  # NUL and control characters
        raise BundleError(f"bundle {root}: manifest names an invalid file name: {rel!r}")
    try:
        rel.encode("utf-8")  # a lone surrogate from a JSON escape cannot be a file name
    except UnicodeEncodeError:
        raise BundleError(f"bundle {root}: manifest names an invalid file name: {rel!r}") from None
    if len(rel) > MAX_NAME:
        raise BundleError(f"bundle {root}: manifest names a file name of {len(rel)} characters (> {MAX_NAME})")
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or ".." in p.parts or "\\" in rel:
        raise BundleError(f"bundle {root}: manifest names a file outside the bundle: {rel!r}")
    full = (root / p).resolve()
    if not full.is_relative_to(root.resolve()):
        raise BundleError(f"bundle {root}: manifest names a file outside the bundle: {rel!r}")
    return full


def read_manifest(root: str | os.PathLike[str], data: bytes | None = None) -> dict[str, Any]:
    """Parse and check the manifest's shape and version (not the file hashes: see malm.bundle.verify).

    data: the manifest's bytes when the caller already read them (to check a signature over exactly these)."""
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"bundle {root}: not a directory")
    if not path.is_file():
        raise BundleError(f"bundle {root}: no {MANIFEST} (is this a malm bundle?)")
    if data is None:
        with open(path, "rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleError(f"bundle {root}: {MANIFEST} is larger than {MAX_MANIFEST_BYTES >> 20} MiB")
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:  # ValueError: bad JSON, or an integer of 5,000 digits
        raise BundleError(f"bundle {root}: {MANIFEST} is not valid JSON ({str(e)[:200]})") from None
    except RecursionError:
        raise BundleError(f"bundle {root}: {MANIFEST} is nested too deeply") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"bundle {root}: {MANIFEST} is not a malm bundle manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"bundle {root}: format version {version!r} is not supported by malm {__version__} "
            f"(expects {FORMAT_VERSION}); re-export the bundle with this malm version"
        )
    # The shape of every section (malm.manifest); what needs the root (paths inside it) is checked below.
    Manifest.from_dict(manifest, f"bundle {root}")
    for key in ("files", "encoders"):  # absent or null: empty, so readers can iterate them directly
        if manifest.get(key) is None:
            manifest[key] = {}
    for rel in manifest["files"]:
        safe_relpath(root, rel)
    for entry in manifest["encoders"].values():
        safe_relpath(root, entry["file"])
    return manifest


def load_manifest(root: str | os.PathLike[str]) -> Manifest:
    """`read_manifest`, typed."""
    return Manifest.from_dict(read_manifest(root), f"bundle {root}")


def check_listed(root: Path, manifest: dict[str, Any]) -> None:
    """Every file a reader opens (encoders, index, store, re-rank and self-check data) must be listed, and so
    hashed: an unlisted file would be used unverified."""
    files = manifest.get("files") or {}
    for rel, what in Manifest.from_dict(manifest, f"bundle {root}").referenced().items():
        if rel not in files:
            raise BundleError(f"bundle {root}: {what} {rel!r} is not listed (and hashed) in the manifest's 'files'")


def stat_key(st: os.stat_result) -> list[int]:
    """What a file's identity and last change are remembered by. ctime is set by the kernel on every write
    and metadata change and cannot be set back by `touch`, so a rewrite with a restored mtime still shows."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def file_stats(path: Path) -> list[list[int]]:
    """stat_key of a file, or of every file under a directory (an .mlpackage)."""
    files = [path] if path.is_file() else _tree_files(path)
    return [stat_key(f.stat()) for f in files]


def require_same_checkpoint(root: str | os.PathLike[str], sha256: str, source: str, advice: str) -> None:
    """One bundle = one model: refuse to add what `source` (weights with this sha256) made to a bundle whose
    encoders came from other weights (two models' embeddings do not live in one space)."""
    root = Path(root)
    if not (root / MANIFEST).is_file():
        return
    exported = (load_manifest(root).model or {}).get("checkpoint_sha256")
    if exported and exported != sha256:
        raise MalmError(f"bundle {root}: its encoders were exported from other weights than {source} "
                        f"(sha256 {exported[:12]}… vs {sha256[:12]}…); {advice}")
