"""Open a bundle for the SDK: parse and verify the manifest (typed in malm/manifest.py), then check what the
SDK relies on across sections."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from malm.bundle import read_manifest, safe_relpath, verify, verify_cached
from malm.errors import BundleError
from malm.manifest import EncoderEntry, IndexSection, Manifest
from malm.preprocess import PreprocessConfig


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: dict[str, Any]  # as stored (for callers that print or pass it on)
    preprocess: PreprocessConfig
    dim: int  # embedding dimension shared by the encoders and the index
    sections: Manifest  # the same manifest, typed and validated: what the SDK reads
    # How the files were checked on open: "full" (every sha256 now), "cached" (sha256 once per file
    # change, stamped in the user's cache), "off" (not checked).
    verification: str = "off"

    def path(self, rel: str) -> Path:
        """A file named by the manifest, resolved inside the bundle (never outside it)."""
        return safe_relpath(self.root, rel)

    def encoder(self, name: str) -> EncoderEntry | None:
        return self.sections.encoders.get(name)

    def listed(self, rel: str) -> bool:
        """Whether the manifest lists (and so hashes) `rel`."""
        return rel in self.sections.files

    def file_hash(self, rel: str) -> str:
        entry = self.sections.files.get(rel)
        if not entry:
            raise BundleError(f"bundle {self.root}: {rel} is not listed in the manifest")
        return entry.sha256

    @property
    def index(self) -> IndexSection:
        assert self.sections.index is not None  # open_bundle refuses a bundle without one
        return self.sections.index


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
    m = Manifest.from_dict(manifest, f"bundle {root}")
    if m.preprocess is None:
        raise BundleError(f"bundle {root}: manifest has no preprocess config (was an image encoder exported?)")
    try:
        cfg = PreprocessConfig.from_dict(m.preprocess.to_dict())
    except (TypeError, ValueError) as e:
        raise BundleError(f"bundle {root}: bad preprocess config in the manifest ({e})") from None
    index = m.index
    if index is None:
        raise BundleError(f"bundle {root}: has no recipe index (run `malm index build --bundle {root}`)")
    for key, rel in (("file", index.file), ("store", index.store)):
        if rel not in m.files:
            raise BundleError(f"bundle {root}: index {key} {rel!r} is not listed (and hashed) in the manifest")
    if m.embedding is None:
        raise BundleError(f"bundle {root}: manifest 'embedding.dim' is missing or invalid")
    dim = m.embedding.dim
    if index.settings.dim != dim:
        raise BundleError(f"bundle {root}: index has dim {index.settings.dim}, the encoders' embedding dim is {dim}")
    mode = "full" if check_hashes == "full" else "cached" if check_hashes else "off"
    return Bundle(root=root, manifest=manifest, preprocess=cfg, dim=dim, sections=m, verification=mode)
