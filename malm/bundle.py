"""The bundle: a directory that ships to a device, described by `manifest.json`.

Light on purpose (stdlib only): the SDK reads it, export and edge_index write it.

Layout (paths are relative to the bundle and must stay inside it):
    manifest.json                 this schema, format_version FORMAT_VERSION
    encoders/*.onnx, *.mlpackage  image (and recipe) encoders
    index/recipes.hnsw            hnswlib index (settings live in the manifest: hnswlib does not save them)
    index/recipes.sqlite          recipe store
    rerank/*                      what local re-ranking needs
    vocab.json                    the recipe tokenizer's vocabulary

Manifest keys (typed in malm/manifest.py, written only through BundleWriter's setters):
    format, format_version, malm_version, created, updated
    model        the training config (dict) the encoders come from, and its hash
    preprocess   PreprocessConfig.to_dict()
    embedding    {"dim": int, "metric": "cosine"}
    files        {relpath: {"sha256": hex, "bytes": int}}; a directory (.mlpackage) is hashed as a tree
    encoders     {name: {"file": relpath, "kind": "onnx"|"coreml"|"tensorrt-onnx", "role": "image"|"recipe"|"rerank",
                         "precision": "fp32"|"int8"|"fp16"|..., "quality": {...}, ...}}
    index        {"file", "store", "space", "dim", "M", "ef_construction", "ef_search", "count", "max_elements"}
    rerank       {"dim", "kind", "weight", "candidates", "tokens", "offsets", "model", "default", "enabled",
                  "disabled_reason", "calibration"} or absent
    selfcheck    {"inputs", "fp32_embeddings", "count", "min_cosine", "expected", "exported_on", "inputs_dtype"} or absent
    tokenizer    {"vocab", "rules", "max_title_tokens", "max_ingredients", "max_instructions", "max_tokens"} or absent
    recipe_selfcheck {"title", "ingredients", "instructions", "fp32_embeddings", "count", "min_cosine", ...} or absent
    (every key, its bounds and meaning: docs/bundle-format.md)
    student      the distilled student's record, when one was exported
    libraries    {name: version} at build time
    quality      {variant: {"im2recipe": {...}, ...}} and export report
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import time
from pathlib import Path, PurePosixPath
from typing import Any

from malm._atomic import fsync_dir, give_default_mode, write_text_atomic
from malm._lock import try_lock, unlock
from malm._version import __version__

# Reading a bundle (manifest.json, path safety, file hashes and identities) lives in malm.bundle_read; its names
# stay importable from here, where callers have always found them.
from malm.bundle_read import MANIFEST as MANIFEST
from malm.bundle_read import MAX_MANIFEST_BYTES as MAX_MANIFEST_BYTES
from malm.bundle_read import check_listed as check_listed
from malm.bundle_read import file_stats as file_stats
from malm.bundle_read import load_manifest as load_manifest
from malm.bundle_read import read_manifest as read_manifest
from malm.bundle_read import require_same_checkpoint as require_same_checkpoint
from malm.bundle_read import safe_relpath as safe_relpath
from malm.bundle_read import sha256_path as sha256_path
from malm.bundle_read import stat_key as stat_key
from malm.errors import BundleError
from malm.manifest import (
    FORMAT,
    FORMAT_VERSION,
    EmbeddingSection,
    EncoderEntry,
    IndexSection,
    Manifest,
    PreprocessSection,
    RecipeSelfCheckSection,
    RerankSection,
    SelfCheckSection,
    TokenizerSection,
)

LOCK = ".lock"
RACY_NS = 2_000_000_000  # file times are coarse: a file changed within this of a check may keep its times
CTIME_RACY_NS = 200_000_000


def verify(root: str | os.PathLike[str], manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check every listed file exists with its recorded size and sha256, and that every file the SDK opens
    is listed. Returns the manifest."""
    root = Path(root)
    manifest = manifest if manifest is not None else read_manifest(root)
    verify_files(root, manifest, cached=False)
    return manifest


def verify_cache_dir() -> Path:
    return Path(os.environ.get("MALM_CACHE_DIR") or Path.home() / ".cache" / "malm") / "verified"


def verify_files(root: Path, manifest: dict[str, Any], *, cached: bool) -> dict[str, list[list[int]]]:
    """Hash every listed file (or, with `cached`, skip it when its stat_key is the one stamped after an
    earlier full check) and return the stat_keys taken *before* hashing: a reader that later finds a file
    with another key (`Bundle.read_bytes`) knows it changed after the check.

    A file that changes while it is hashed is refused (the keys are compared again after hashing), so a
    stamp never vouches for bytes that were not the ones hashed.
    """
    files = manifest.get("files") or {}
    check_listed(root, manifest)
    paths = {rel: safe_relpath(root, rel) for rel in files}
    for rel, path in paths.items():
        if not path.exists():
            raise BundleError(f"bundle {root}: missing file {rel}")
    before = {rel: file_stats(path) for rel, path in paths.items()}
    key = hashlib.sha256(json.dumps(["v2", str(root.resolve()), files], sort_keys=True).encode()).hexdigest()
    stamp = verify_cache_dir() / f"{key}.json"
    if cached:
        try:
            if json.loads(stamp.read_text()) == before:
                return before
        except (OSError, ValueError):
            pass  # no stamp yet or an unreadable one: check fully
    for rel, path in paths.items():
        entry = files[rel]
        digest, size = sha256_path(path)
        if size != entry["bytes"]:
            raise BundleError(f"bundle {root}: {rel} has {size} bytes, manifest says {entry['bytes']} (truncated or replaced)")
        if digest != entry["sha256"]:
            raise BundleError(f"bundle {root}: {rel} does not match its sha256 in the manifest (tampered or corrupted)")
    after = {rel: file_stats(path) for rel, path in paths.items()}
    changed = sorted(rel for rel in files if after[rel] != before[rel])
    if changed:
        raise BundleError(f"bundle {root}: {', '.join(changed)} changed while being verified; load it again")
    if cached:
        # Like git's "racy" index entries: a file changed within the clock's tick of a stamp could keep its
        # times, so only files whose last change is older than RACY_NS are stamped.
        # ctime comes from the kernel's clock (ticks of a few ms), never from a user: a shorter window.
        now = time.time_ns()
        stats = [st for sts in before.values() for st in sts]
        if all(st[1] < now - RACY_NS and st[2] < now - CTIME_RACY_NS for st in stats):
            try:
                write_text_atomic(stamp, json.dumps(before))
            except OSError:
                pass  # a read-only home only costs the next start a full check
    return before


def verify_cached(root: str | os.PathLike[str], manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """`verify`, but hash each file only once per (size, mtime, ctime, inode, device): a restart skips
    re-hashing (a 100k-recipe index is ~400 MB). Rewriting a file and restoring its mtime (`touch -r`) still
    changes its ctime, which only the kernel sets, so the full check comes back. It does not hold against
    someone who can set the system clock back (root): use `verify` or a signature for that."""
    root = Path(root)
    manifest = manifest if manifest is not None else read_manifest(root)
    verify_files(root, manifest, cached=True)
    return manifest


def new_manifest() -> dict[str, Any]:
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "malm_version": __version__, "created": now,
            "files": {}, "encoders": {}, "libraries": {}, "quality": {}}


class BundleWriter:
    """Exclusive, crash-safe writes into a bundle.

    Holds an advisory lock (`.lock`, flock) for its lifetime so a second writer waits (up to
    `timeout` s) or is refused; files are staged via temp + rename and the manifest is replaced
    atomically last, so a kill at any point leaves the previous manifest and files valid.
    Replaced files are written under a new name first when the old one is still referenced.

        with BundleWriter(path) as bw:
            bw.add_file(src, "encoders/image_int8.onnx")
            bw.set_encoder("image_int8", EncoderEntry("encoders/image_int8.onnx", "onnx", "image", "int8"))
        # manifest committed on exit without an exception
    """

    def __init__(self, root: str | os.PathLike[str], timeout: float = 30.0) -> None:
        # Resolved once: staged paths come from `safe_relpath` (resolved), and commit() names them relative
        # to the root, which fails for a relative root such as `runs/demo/bundle`.
        self.root = Path(root).resolve()
        self.timeout = timeout
        self._lock_fd: int | None = None
        self.manifest: dict[str, Any] = {}
        # Files the manifest on disk references: replacing one in place would break that manifest until the
        # new one lands, so its new version waits under a hidden `.NAME.next` (rel -> path) until commit.
        self._live: set[str] = set()
        self._pending: dict[str, Path] = {}
        # Files written in place that no manifest on disk names yet: removed again if the write fails.
        self._fresh: set[str] = set()

    def __enter__(self) -> BundleWriter:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            # O_NOFOLLOW: a `.lock` planted as a symlink would make us create or write a file outside the bundle.
            self._lock_fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise BundleError(f"bundle {self.root}: cannot open its lock file {LOCK} ({e.strerror}; a symlink "
                              "is refused)") from None
        deadline = time.monotonic() + self.timeout
        while True:
            if try_lock(self._lock_fd):
                break
            if time.monotonic() > deadline:
                os.close(self._lock_fd)
                self._lock_fd = None
                raise BundleError(f"bundle {self.root}: another malm process is writing it (lock held)")
            time.sleep(0.1)
        self.manifest = read_manifest(self.root) if (self.root / MANIFEST).exists() else new_manifest()
        self._live = set(self.manifest.get("files") or {})
        self._pending, self._fresh = {}, set()
        self._finish_interrupted()
        self._remove_leftovers()
        return self

    # Typed setters: every writer goes through these (never `manifest[...] = ...`), so what lands in
    # manifest.json has the shape `Manifest.from_dict` accepts and names only files added to the bundle.
    def sections(self) -> Manifest:
        """The manifest being written, typed."""
        return Manifest.from_dict(self.manifest, f"bundle {self.root}")

    def _require_files(self, what: str, rels: list[str]) -> None:
        files = self.manifest.get("files") or {}
        missing = [rel for rel in rels if rel not in files]
        if missing:
            raise BundleError(f"bundle {self.root}: {what} files {missing} were not added to the bundle")

    def set_encoder(self, name: str, entry: EncoderEntry) -> None:
        self._require_files(f"encoder {name!r}", [entry.file])
        self.manifest.setdefault("encoders", {})[name] = entry.to_dict()

    def set_index(self, section: IndexSection) -> None:
        self._require_files("index", [section.file, section.store])
        self.manifest["index"] = section.to_dict()

    def set_rerank(self, section: RerankSection | None) -> None:
        """The re-rank section, or None to drop it (its token files are going)."""
        if section is None:
            self.manifest.pop("rerank", None)
            return
        self._require_files("re-rank", section.files())
        self.manifest["rerank"] = section.to_dict()

    def set_preprocess(self, section: PreprocessSection) -> None:
        self.manifest["preprocess"] = section.to_dict()

    def set_embedding(self, section: EmbeddingSection) -> None:
        self.manifest["embedding"] = section.to_dict()

    def set_model(self, model: dict[str, Any]) -> None:
        """The training config the encoders come from, its hash and the checkpoint's sha256."""
        self.manifest["model"] = dict(model)

    def set_student(self, student: dict[str, Any]) -> None:
        self.manifest["student"] = dict(student)

    def add_libraries(self, versions: dict[str, str]) -> None:
        self.manifest.setdefault("libraries", {}).update(versions)

    def add_quality(self, variants: dict[str, Any]) -> None:
        self.manifest.setdefault("quality", {}).update(variants)

    def set_selfcheck(self, section: SelfCheckSection) -> None:
        """The int8 self-check section; its files must be added first."""
        self._require_files("self-check", [section.inputs, section.fp32_embeddings])
        self.manifest["selfcheck"] = section.to_dict()

    def set_tokenizer(self, section: TokenizerSection) -> None:
        """How recipe text becomes the recipe encoder's ids; its vocabulary must be added first."""
        self._require_files("tokenizer", [section.vocab])
        self.manifest["tokenizer"] = section.to_dict()

    def set_recipe_selfcheck(self, section: RecipeSelfCheckSection) -> None:
        """The recipe encoder's self-check section; its files must be added first."""
        self._require_files("recipe self-check", section.files())
        self.manifest["recipe_selfcheck"] = section.to_dict()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                self.commit()
            else:
                # A write that failed before commit leaves no staged `.NAME.next` files behind: no manifest
                # named them. (A commit that fails midway keeps them: its first manifest may name them, and
                # the next writer rolls that forward.)
                for staged in self._pending.values():
                    _remove(staged)
                for rel in self._fresh:
                    _remove(self.path(rel))
                self._pending, self._fresh = {}, set()
        finally:
            if self._lock_fd is not None:
                unlock(self._lock_fd)
                os.close(self._lock_fd)
                self._lock_fd = None

    def path(self, rel: str) -> Path:
        return safe_relpath(self.root, rel)

    def add_file(self, src: str | os.PathLike[str], rel: str, move: bool = False) -> str:
        """Copy (or move) a file or directory into the bundle at `rel`, atomically, and record its hash."""
        src = Path(src)
        dest = self.path(rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        replacing_live = rel in self._live and dest.exists()
        staging = dest.with_name(f".{dest.name}.next" if replacing_live else f".{dest.name}.staging")
        _remove(staging)
        if move:
            shutil.move(str(src), staging)
        elif src.is_dir():
            shutil.copytree(src, staging)
        else:
            shutil.copyfile(src, staging)
        self._fsync_tree(staging)
        give_default_mode(staging)  # a temp dir or file moved in keeps mkdtemp's 0700 / mkstemp's 0600
        if replacing_live:
            self._pending[rel] = staging  # swapped in by commit(), in an order that survives a kill
        else:
            _swap_in(staging, dest)
            self._fresh.add(rel)
        self.record(rel)
        return rel

    def write_json(self, rel: str, obj: Any) -> str:
        return self.write_text(rel, json.dumps(obj, indent=2, sort_keys=True))

    def write_text(self, rel: str, text: str) -> str:
        """Write a small text file into the bundle (staged like `add_file` when the live manifest lists it)."""
        dest = self.path(rel)
        if rel in self._live and dest.exists():
            self._pending[rel] = dest.with_name(f".{dest.name}.next")
            write_text_atomic(self._pending[rel], text)
        else:
            write_text_atomic(dest, text)
            self._fresh.add(rel)
        self.record(rel)
        return rel

    def record(self, rel: str) -> None:
        """(Re)hash a file already written in place at `rel` (e.g. through atomic_path)."""
        digest, size = sha256_path(self._pending.get(rel) or self.path(rel))
        self.manifest.setdefault("files", {})[rel] = {"sha256": digest, "bytes": size}

    def forget(self, rel: str) -> None:
        self.manifest.get("files", {}).pop(rel, None)
        staged = self._pending.pop(rel, None)
        if staged is not None:
            _remove(staged)

    def commit(self) -> None:
        """Make the manifest (and the files it names) live; every step leaves a manifest that verifies.

        Replaced files go through two manifests: first one naming the new versions at their hidden `.next`
        names (the old files are then unreferenced), then, once the new versions are also linked at their
        real names, the final one. A kill before the first leaves the old bundle, after it the new one.
        """
        self.manifest["updated"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        if self._pending:
            names = {rel: path.relative_to(self.root).as_posix() for rel, path in self._pending.items()}
            write_text_atomic(self.root / MANIFEST, json.dumps(_renamed(self.manifest, names), indent=2,
                                                               sort_keys=True))
            for rel, staged in self._pending.items():
                _swap_in(_link_copy(staged), self.path(rel))
        write_text_atomic(self.root / MANIFEST, json.dumps(self.manifest, indent=2, sort_keys=True))
        for staged in self._pending.values():
            _remove(staged)
        self._pending, self._fresh = {}, set()
        self._live = set(self.manifest.get("files") or {})

    def _remove_leftovers(self) -> None:
        """Staged files of a killed writer that no manifest references (we hold the lock: nobody else writes)."""
        listed = {(self.root / rel).resolve() for rel in self.manifest.get("files") or {}}
        for p in list(self.root.rglob(".*")):
            if p.name.endswith((".next", ".staging", ".link", ".old")) and p.resolve() not in listed:
                _remove(p)

    def _finish_interrupted(self) -> None:
        """A writer killed between commit's two manifests left one naming `.NAME.next` files: roll it forward."""
        files = self.manifest.get("files") or {}
        hidden = {rel for rel in files if PurePosixPath(rel).name.startswith(".")
                  and PurePosixPath(rel).name.endswith(".next")}
        if not hidden:
            return
        back: dict[str, str] = {}
        for rel in hidden:
            p = PurePosixPath(rel)
            real = str(p.with_name(p.name[1:-len(".next")]))
            back[rel] = real
            self._pending[real] = self.path(rel)
        self.manifest = _renamed(self.manifest, back)
        self._live = set(self.manifest.get("files") or {})
        self.commit()

    @staticmethod
    def _fsync_tree(path: Path) -> None:
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for f in files:
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _swap_in(staged: Path, dest: Path) -> None:
    """Rename `staged` over `dest` (a file atomically; a directory via a trash name)."""
    if dest.is_dir():
        # A directory cannot be renamed over a non-empty one: swap via a trash name.
        trash = dest.with_name(f".{dest.name}.old")
        _remove(trash)
        os.replace(dest, trash)
        os.replace(staged, dest)
        shutil.rmtree(trash)
    else:
        os.replace(staged, dest)
    fsync_dir(dest.parent)


def _link_copy(src: Path) -> Path:
    """A hard-linked twin of `src` (a copy where links are not supported), to rename into place."""
    twin = src.with_name(src.name + ".link")
    _remove(twin)
    try:
        if src.is_dir():
            shutil.copytree(src, twin, copy_function=os.link)
        else:
            os.link(src, twin)
    except OSError:
        _remove(twin)
        shutil.copytree(src, twin) if src.is_dir() else shutil.copyfile(src, twin)
        BundleWriter._fsync_tree(twin)
    return twin


def _renamed(manifest: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """The manifest with every file reference (a `files` key, or a string value elsewhere) in `names` renamed."""
    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return names.get(value, value) if isinstance(value, str) else value

    out = {k: walk(v) for k, v in manifest.items() if k != "files"}
    out["files"] = {names.get(rel, rel): entry for rel, entry in (manifest.get("files") or {}).items()}
    return out
