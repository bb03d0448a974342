"""Open a bundle for the SDK: parse and verify the manifest (typed in malm/manifest.py), then check what the
SDK relies on across sections."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from malm.bundle import (
    CTIME_RACY_NS,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    RACY_NS,
    check_listed,
    file_stats,
    read_manifest,
    safe_relpath,
    stat_key,
    verify_files,
)
from malm.edge_index.rerank import check_section as check_rerank
from malm.errors import BundleError
from malm.manifest import EncoderEntry, IndexSection, Manifest
from malm.preprocess import PreprocessConfig
from malm.signing import TrustedKey, TrustPolicy, check_signature


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
    # stat_key of each listed file taken before it was verified (empty when verification is off)
    stamps: Mapping[str, list[list[int]]] = field(default_factory=dict, repr=False)
    verified_ns: int = 0  # when (time.time_ns)
    signed_by: str | None = None  # id of the trusted key whose signature was checked, or None

    def path(self, rel: str) -> Path:
        """A file named by the manifest, resolved inside the bundle (never outside it); an unlisted (so
        unhashed) file is refused."""
        if rel not in self.sections.files:
            raise BundleError(f"bundle {self.root}: {rel} is not listed (and hashed) in the manifest")
        return safe_relpath(self.root, rel)

    def unchanged_path(self, rel: str) -> Path:
        """`path(rel)` for a reader that opens it itself (a TensorRT build, a CoreML package): refused when the
        file (or any file under the directory) changed since it was verified."""
        path = self.path(rel)
        expected = self.stamps.get(rel)
        if expected is not None and file_stats(path) != expected:
            raise BundleError(f"bundle {self.root}: {rel} changed after it was verified; load it again")
        return path

    def _racy(self, st: os.stat_result) -> bool:
        """Changed so shortly before the check that a later write could have kept the same times."""
        return st.st_mtime_ns >= self.verified_ns - RACY_NS or st.st_ctime_ns >= self.verified_ns - CTIME_RACY_NS

    @contextmanager
    def open_stable(self, rel: str) -> Iterator[BinaryIO | None]:
        """An open file that holds the verified bytes, for a reader that takes a file (hnswlib, by
        /proc/self/fd), without a copy in memory: its fstat equals the stamp taken before it was hashed, and
        still does after the reader is done (ctime changes on any write, and only the kernel sets it).
        None when that cannot be shown (verification off, or a change within the clock's tick of the check):
        the caller then reads `read_bytes`."""
        expected = self.stamps.get(rel)
        path = self.path(rel)
        if expected is None:
            yield None
            return
        try:
            f = open(path, "rb")
        except OSError as e:
            raise BundleError(f"bundle {self.root}: {rel} cannot be read ({e.strerror})") from None
        with f:
            st = os.fstat(f.fileno())
            if [stat_key(st)] != expected:
                raise BundleError(f"bundle {self.root}: {rel} changed after it was verified; load it again")
            if self._racy(st):
                yield None
                return
            yield f
            if [stat_key(os.fstat(f.fileno()))] != expected:
                raise BundleError(f"bundle {self.root}: {rel} changed while it was read; load it again")

    def read_bytes(self, rel: str) -> bytes:
        """The bytes of a listed file, read once, that are the bytes verified: a file whose stat_key
        (size, mtime, ctime, inode, device) differs from the one taken before hashing changed after the
        check and is refused; one changed within the clock's tick of the check is hashed again."""
        path = self.path(rel)
        try:
            with open(path, "rb") as f:
                data = f.read()
                st = os.fstat(f.fileno())
        except OSError as e:
            raise BundleError(f"bundle {self.root}: {rel} cannot be read ({e.strerror})") from None
        expected = self.stamps.get(rel)
        if expected is not None:
            if [stat_key(st)] != expected:
                raise BundleError(f"bundle {self.root}: {rel} changed after it was verified; load it again")
            if self._racy(st) and hashlib.sha256(data).hexdigest() != self.file_hash(rel):
                raise BundleError(f"bundle {self.root}: {rel} does not match its sha256 in the manifest")
        return data

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


def open_bundle(root: str | os.PathLike[str], check_hashes: bool | str = True,
                trusted_keys: Iterable[TrustedKey] | None = None, require_signature: bool | None = None,
                policy: TrustPolicy | None = None) -> Bundle:
    """Read the bundle at `root`, check its signature (when keys are trusted or one is required) and verify
    every file's sha256.

    check_hashes: True hashes each file once per (size, mtime, ctime, inode, device) (`verify_cached`),
    "full" hashes every file on every open, False skips the check (the signature is still checked).
    trusted_keys / require_signature: see `malm.signing.TrustPolicy.resolve` (or pass a resolved `policy`).
    """
    root = Path(root)
    if check_hashes not in (True, False, "full"):
        raise BundleError(f"bundle {root}: verify must be True, False or 'full', not {check_hashes!r}")
    policy = policy or TrustPolicy.resolve(trusted_keys, require_signature)
    data = None
    if (root / MANIFEST).is_file():
        # Read once: the signature is checked over exactly the bytes that are parsed.
        with open(root / MANIFEST, "rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
    manifest = read_manifest(root, data)
    signed_by = check_signature(root, data or b"", policy)
    started = time.time_ns()
    stamps = verify_files(root, manifest, cached=check_hashes is True) if check_hashes else {}
    if not check_hashes:
        check_listed(root, manifest)
    m = Manifest.from_dict(manifest, f"bundle {root}")
    if m.preprocess is None:
        raise BundleError(f"bundle {root}: manifest has no preprocess config (was an image encoder exported?)")
    try:
        cfg = PreprocessConfig.from_dict(m.preprocess.to_dict())
    except (TypeError, ValueError) as e:
        raise BundleError(f"bundle {root}: bad preprocess config in the manifest ({e})") from None
    if m.rerank is not None:
        check_rerank(m.rerank, f"bundle {root}")
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
    return Bundle(root=root, manifest=manifest, preprocess=cfg, dim=dim, sections=m, verification=mode,
                  stamps=stamps, verified_ns=started, signed_by=signed_by)
