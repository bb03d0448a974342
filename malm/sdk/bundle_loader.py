"""Open a bundle for the SDK: parse and verify the manifest, then check what the SDK relies on."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from malm.bundle import read_manifest, safe_relpath, verify, verify_cached
from malm.errors import BundleError
from malm.preprocess import PreprocessConfig


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: dict[str, Any]
    preprocess: PreprocessConfig
    dim: int  # embedding dimension shared by the encoders and the index
    # How the files were checked on open: "full" (every sha256 now), "cached" (sha256 once per file
    # change, stamped in the user's cache), "off" (not checked).
    verification: str = "off"

    def path(self, rel: str) -> Path:
        """A file named by the manifest, resolved inside the bundle (never outside it)."""
        return safe_relpath(self.root, rel)

    def encoder(self, name: str) -> dict[str, Any] | None:
        entry = (self.manifest.get("encoders") or {}).get(name)
        return entry if isinstance(entry, dict) else None

    def file_hash(self, rel: str) -> str:
        entry = (self.manifest.get("files") or {}).get(rel)
        if not entry:
            raise BundleError(f"bundle {self.root}: {rel} is not listed in the manifest")
        return str(entry["sha256"])

    @property
    def index(self) -> dict[str, Any]:
        return dict(self.manifest["index"])


def open_bundle(root: str | os.PathLike[str], check_hashes: bool | str = True) -> Bundle:
    """Read the bundle at `root` and verify every file's sha256.

    check_hashes: True hashes each file once per (size, mtime, inode) (`verify_cached`), "full" hashes
    every file on every open, False skips the check.
    """
    root = Path(root)
    manifest = read_manifest(root)
    if check_hashes == "full":
        verify(root, manifest)
    elif check_hashes is True:
        verify_cached(root, manifest)
    elif check_hashes is not False:
        raise BundleError(f"bundle {root}: verify must be True, False or 'full', not {check_hashes!r}")
    try:
        cfg = PreprocessConfig.from_dict(manifest.get("preprocess") or {})
    except (TypeError, ValueError) as e:
        raise BundleError(f"bundle {root}: bad preprocess config in the manifest ({e})") from None
    if "preprocess" not in manifest:
        raise BundleError(f"bundle {root}: manifest has no preprocess config (was an image encoder exported?)")
    index = manifest.get("index")
    if not isinstance(index, dict) or not index.get("file") or not index.get("store"):
        raise BundleError(f"bundle {root}: has no recipe index (run `malm index build --bundle {root}`)")
    files = manifest.get("files") or {}
    for key in ("file", "store"):
        if index[key] not in files:
            raise BundleError(f"bundle {root}: index {key} {index[key]!r} is not listed (and hashed) in the manifest")
    emb = manifest.get("embedding") or {}
    dim = emb.get("dim")
    if not isinstance(dim, int) or dim <= 0:
        raise BundleError(f"bundle {root}: manifest 'embedding.dim' is missing or invalid")
    if index.get("dim") != dim:
        raise BundleError(f"bundle {root}: index has dim {index.get('dim')}, the encoders' embedding dim is {dim}")
    mode = "full" if check_hashes == "full" else "cached" if check_hashes else "off"
    return Bundle(root=root, manifest=manifest, preprocess=cfg, dim=dim, verification=mode)
