"""Parse a Recipe1M folder once into a compact cache that training memory-maps.

    malm data prepare DATA_DIR [--images DIR] [--cache DIR] [--min-freq N] [--force]

Cache layout (no pickle anywhere):

    manifest.json              format, source file sizes/mtimes, settings, read statistics (written last)
    vocab.json                 `malm.text.Vocabulary`, built from the training split
    <split>/ids.json           recipe ids, row order of the arrays
    <split>/title.npy          int32 [N, T]
    <split>/ingredients.npy    int32 [N, Ni, L]
    <split>/instructions.npy   int32 [N, Ns, L]
    <split>/num_images.npy     int32 [N]   present images per recipe (0 = text only)
    <split>/recipes.jsonl      one line per recipe: raw text, url, detected ingredients, image paths
    <split>/offsets.npy        int64 [N+1] byte offset of each line, for random access

Two streaming passes keep memory flat: the first reads layer1.json record by record, writes the JSON lines
and the (truncated) token lists and counts training words; the second encodes the token lists with the
vocabulary straight into memory-mapped arrays. The cache is built in a temp folder and renamed into place,
under a lock, so concurrent callers (every rank of a torchrun) see either no cache or a complete one.

It is reused while layer1/layer2/det_ingrs.json keep their size and mtime and the settings are the same.
Images are looked up at prepare time only: after adding or removing image files, pass `force=True`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from malm._atomic import fsync_dir, give_default_mode, write_text_atomic
from malm.errors import MalmError
from malm.recipe1m import (
    DET_INGRS,
    LAYER1,
    LAYER2,
    SPLITS,
    ReadStats,
    iter_recipe1m,
    resolve_images_dir,
)
from malm.text import TextLimits, Vocabulary, clean_ingredient, clean_text, encode_sequence, tokenize

CACHE_FORMAT = 1
DEFAULT_MIN_FREQ = 10  # H-T's default
CACHE_DIRNAME = ".malm_cache"
_BLOCK = 4096  # recipes encoded per block in the second pass


def default_cache_dir(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / CACHE_DIRNAME


class SplitData:
    """One split of a prepared cache: memory-mapped token arrays plus random access to the raw recipes."""

    def __init__(self, root: Path, name: str, images_dir: Path) -> None:
        self.name = name
        self.root = root
        self.images_dir = images_dir
        try:
            self.ids: list[str] = json.loads((root / "ids.json").read_text(encoding="utf-8"))
            self.title = np.load(root / "title.npy", mmap_mode="r")
            self.ingredients = np.load(root / "ingredients.npy", mmap_mode="r")
            self.instructions = np.load(root / "instructions.npy", mmap_mode="r")
            self.num_images = np.load(root / "num_images.npy", mmap_mode="r")
            self.offsets = np.load(root / "offsets.npy")
        except (OSError, ValueError) as e:
            raise MalmError(f"{root}: damaged data cache ({e}); rerun `malm data prepare --force`") from None
        n = len(self.ids)
        if not (len(self.title) == len(self.ingredients) == len(self.instructions) == len(self.num_images) == n
                and len(self.offsets) == n + 1):
            raise MalmError(f"{root}: damaged data cache (array lengths disagree); rerun `malm data prepare --force`")
        self._fd: tuple[int, int] | None = None  # (pid, fd): re-opened after fork in DataLoader workers

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"SplitData({self.name!r}, {len(self)} recipes, {int((self.num_images > 0).sum())} paired)"

    def __getstate__(self) -> dict[str, Any]:
        # Spawned DataLoader workers get the paths, not an fd of the parent.
        return {"root": self.root, "name": self.name, "images_dir": self.images_dir}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"], state["name"], state["images_dir"])  # type: ignore[misc]

    def _read_line(self, i: int) -> bytes:
        if not -len(self) <= i < len(self):
            raise IndexError(f"recipe {i} out of range for split {self.name!r} of {len(self)}")
        i %= len(self)
        pid = os.getpid()
        if self._fd is None or self._fd[0] != pid:
            self._fd = (pid, os.open(self.root / "recipes.jsonl", os.O_RDONLY))
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        return os.pread(self._fd[1], end - start, start)

    def recipe(self, i: int) -> dict[str, Any]:
        """Raw text of recipe i: id, title, ingredients, instructions, url, det_ingredients, images (relative)."""
        return json.loads(self._read_line(i))

    def image_paths(self, i: int) -> list[Path]:
        if self.num_images[i] == 0:
            return []
        return [self.images_dir / rel for rel in self.recipe(i)["images"]]

    def tokens(self, i: int) -> dict[str, np.ndarray]:
        return {"title": np.asarray(self.title[i]), "ingredients": np.asarray(self.ingredients[i]),
                "instructions": np.asarray(self.instructions[i])}

    def paired_indices(self) -> np.ndarray:
        """Row indices of the recipes with at least one present image, int64."""
        return np.flatnonzero(np.asarray(self.num_images) > 0).astype(np.int64)

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None and fd[0] == os.getpid():
            with contextlib.suppress(OSError):
                os.close(fd[1])


class PreparedData:
    """A prepared cache: `vocab`, `limits`, `stats`, and `split(name) -> SplitData`."""

    def __init__(self, cache_dir: Path, manifest: dict[str, Any], reused: bool) -> None:
        self.cache_dir = cache_dir
        self.manifest = manifest
        self.reused = reused  # True when an existing cache was loaded, False when it was just built
        self.data_dir = Path(manifest["data_dir"])
        self.images_dir = Path(manifest["images_dir"])
        self.limits = TextLimits.from_dict(manifest["settings"]["limits"])
        self.min_freq = int(manifest["settings"]["min_freq"])
        self.stats = ReadStats.from_dict(manifest["stats"])
        self.vocab = Vocabulary.load(cache_dir / "vocab.json")
        self._splits: dict[str, SplitData] = {}

    @property
    def splits(self) -> tuple[str, ...]:
        return SPLITS

    def split(self, name: str) -> SplitData:
        if name not in SPLITS:
            raise MalmError(f"unknown split {name!r}; one of {', '.join(SPLITS)}")
        if name not in self._splits:
            self._splits[name] = SplitData(self.cache_dir / name, name, self.images_dir)
        return self._splits[name]

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={self.stats.recipes[s]}/{self.stats.paired[s]}" for s in SPLITS)
        return f"PreparedData({str(self.cache_dir)!r}, vocab={len(self.vocab)}, recipes/paired: {counts})"


def _fingerprint(data_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in (LAYER1, LAYER2, DET_INGRS):
        try:
            st = (data_dir / name).stat()
            out[name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        except FileNotFoundError:
            out[name] = None
    return out


def _wanted(data_dir: Path, images_dir: Path, min_freq: int, limits: TextLimits) -> dict[str, Any]:
    return {
        "format": CACHE_FORMAT,
        "data_dir": str(data_dir),
        "images_dir": str(images_dir),
        "sources": _fingerprint(data_dir),
        "settings": {"min_freq": min_freq, "limits": limits.to_dict()},
    }


def _stale_reason(cache_dir: Path, wanted: dict[str, Any]) -> str | None:
    """None when the cache at `cache_dir` matches `wanted`, else why not (for the log)."""
    try:
        manifest = json.loads((cache_dir / "manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no cache yet"
    except (OSError, ValueError):
        return "unreadable manifest"
    for key, what in (("format", "cache format"), ("sources", "source files"), ("settings", "settings"),
                      ("images_dir", "images folder"), ("data_dir", "data folder")):
        if manifest.get(key) != wanted[key]:
            return f"{what} changed"
    return None


def open_prepared(cache_dir: str | os.PathLike[str]) -> PreparedData:
    """Open an existing cache as it is (no check against the sources)."""
    cache_dir = Path(cache_dir)
    try:
        manifest = json.loads((cache_dir / "manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MalmError(f"{cache_dir}: no prepared data here (run `malm data prepare`)") from None
    except (OSError, ValueError) as e:
        raise MalmError(f"{cache_dir / 'manifest.json'}: unreadable ({e})") from None
    if manifest.get("format") != CACHE_FORMAT:
        raise MalmError(f"{cache_dir}: cache format {manifest.get('format')!r}, expected {CACHE_FORMAT}; "
                        "rerun `malm data prepare --force`")
    return PreparedData(cache_dir, manifest, reused=True)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; the atomic rename still protects readers
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def prepare(
    data_dir: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    images_dir: str | os.PathLike[str] | None = None,
    min_freq: int = DEFAULT_MIN_FREQ,
    limits: TextLimits | None = None,
    force: bool = False,
    strict: bool = False,
    log: Callable[[str], None] | None = None,
) -> PreparedData:
    """The prepared cache of a Recipe1M folder: reused when sources and settings are unchanged, else built."""
    data_dir = Path(data_dir).resolve()
    limits = limits or TextLimits()
    if min_freq < 1:
        raise MalmError(f"--min-freq must be >= 1, got {min_freq}")
    if not data_dir.is_dir():
        raise MalmError(f"{data_dir}: data folder not found")
    if not (data_dir / LAYER1).is_file():
        raise MalmError(f"{data_dir / LAYER1}: file not found (a Recipe1M folder holds layer1.json, layer2.json, images/)")
    images = resolve_images_dir(data_dir, images_dir).resolve()
    explicit_cache = cache_dir is not None
    cache = Path(cache_dir).resolve() if cache_dir is not None else default_cache_dir(data_dir)
    say = log or (lambda _msg: None)
    wanted = _wanted(data_dir, images, min_freq, limits)
    hidden = "." + cache.name.lstrip(".")  # prefix of the lock and temp folders beside the cache

    reason = "--force" if force else _stale_reason(cache, wanted)
    if reason is None:
        say(f"reusing data cache {cache}")
        return open_prepared(cache)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=f"{hidden}.probe-", dir=cache.parent)
        os.rmdir(probe)
    except OSError as e:
        hint = "" if explicit_cache else "; pass --cache DIR (cache_dir=) to put the cache somewhere writable"
        raise MalmError(f"{cache}: cannot write the data cache here ({e.strerror or e}){hint}") from None

    with _lock(cache.parent / f"{hidden}.lock"):
        # Another process (another rank) may have built it while we waited.
        if not force and _stale_reason(cache, wanted) is None:
            say(f"reusing data cache {cache} (built by another process)")
            return open_prepared(cache)
        say(f"preparing {data_dir} → {cache} ({reason})")
        build = Path(tempfile.mkdtemp(prefix=f"{hidden}.build-", dir=cache.parent))
        try:
            _build(data_dir, images, build, wanted, min_freq, limits, strict, say)
            give_default_mode(build)  # mkdtemp's 0700 would keep other users (a training service) out
            old = None
            if cache.exists():
                old = cache.parent / f"{hidden}.old-{os.getpid()}-{time.monotonic_ns()}"
                os.rename(cache, old)
            os.rename(build, cache)
            fsync_dir(cache.parent)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if build.exists():
                shutil.rmtree(build, ignore_errors=True)
    prepared = open_prepared(cache)
    prepared.reused = False
    return prepared


def _line_tokens(lines: tuple[str, ...], clean: Callable[[str], str], count: Counter[str] | None,
                 max_lines: int, max_words: int) -> list[list[str]]:
    kept: list[list[str]] = []
    for line in lines:
        toks = tokenize(clean(line))
        if count is not None:
            count.update(toks)
        if toks and len(kept) < max_lines:
            kept.append(toks[:max_words])
    return kept


def _append_rows(outs: dict[str, Any], block: dict[str, np.ndarray], rows: int) -> None:
    for k, fh in outs.items():
        fh.write(block[k][:rows].tobytes())
        block[k].fill(0)


def _build(data_dir: Path, images: Path, build: Path, wanted: dict[str, Any], min_freq: int,
           limits: TextLimits, strict: bool, say: Callable[[str], None]) -> None:
    """Two passes: read every recipe once (records, token lists, the training split's word counts), then,
    with the vocabulary those counts give, encode each split's token lists into fixed-shape arrays."""
    t0 = time.perf_counter()
    stats = ReadStats()
    counter: Counter[str] = Counter()
    files = _read_pass(data_dir, images, build, limits, strict, stats, counter, say, t0)
    if not stats.recipes["train"]:
        raise MalmError(f"{data_dir / LAYER1}: no valid training recipes (partition 'train'), cannot build a vocabulary"
                        + (f"; skipped: {dict(stats.skipped)}" if stats.skipped else ""))
    vocab = Vocabulary.build(counter, min_freq=min_freq)
    del counter
    vocab.save(build / "vocab.json")
    say(f"  vocabulary: {len(vocab)} words (min frequency {min_freq}); encoding")
    for split in SPLITS:
        _encode_pass(build / split, files[split], vocab, limits)
    manifest = dict(wanted, stats=stats.to_dict(), vocab_size=len(vocab),
                    created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    prepare_seconds=round(time.perf_counter() - t0, 3))
    write_text_atomic(build / "manifest.json", json.dumps(manifest, indent=1, ensure_ascii=False))
    paired = sum(stats.paired.values())
    say(f"  done in {time.perf_counter() - t0:.1f}s: {sum(stats.recipes.values())} recipes, {paired} with images")


def _read_pass(data_dir: Path, images: Path, build: Path, limits: TextLimits, strict: bool, stats: ReadStats,
               counter: Counter[str], say: Callable[[str], None], t0: float) -> dict[str, dict[str, Any]]:
    """Pass 1: each split's recipes.jsonl (and its offsets, ids, image counts) and token lists; the training
    split's words counted into `counter`."""
    words = limits.max_tokens - 2
    root_len = len(str(images)) + 1
    files: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        (build / split).mkdir()
        files[split] = {
            "jsonl": open(build / split / "recipes.jsonl", "wb"),
            # Token lists of pass 1, re-read in pass 2; deleted before the cache is published.
            "tokens": open(build / split / "tokens.tmp.jsonl", "w", encoding="utf-8"),
            "offsets": [0], "ids": [], "num_images": [],
        }
    try:
        for n, r in enumerate(iter_recipe1m(data_dir, images, stats, strict), 1):
            f = files[r.partition]
            count = counter if r.partition == "train" else None
            title = tokenize(clean_text(r.title))
            if count is not None:
                count.update(title)
            ingr = _line_tokens(r.ingredients, clean_ingredient, count, limits.max_ingredients, words)
            instr = _line_tokens(r.instructions, clean_text, count, limits.max_instructions, words)
            f["tokens"].write(json.dumps([title[: limits.max_title_tokens - 2], ingr, instr], ensure_ascii=False))
            f["tokens"].write("\n")
            record = json.dumps({
                "id": r.id, "title": r.title, "ingredients": list(r.ingredients),
                "instructions": list(r.instructions), "url": r.url,
                "det_ingredients": list(r.names),
                "images": [str(p)[root_len:] for p in r.image_paths],
            }, ensure_ascii=False).encode("utf-8") + b"\n"
            f["jsonl"].write(record)
            f["offsets"].append(f["offsets"][-1] + len(record))
            f["ids"].append(r.id)
            f["num_images"].append(len(r.image_paths))
            if n % 100_000 == 0:
                say(f"  read {n} recipes ({time.perf_counter() - t0:.0f}s)")
    finally:
        for f in files.values():
            f["jsonl"].close()
            f["tokens"].close()
    return files


def _encode_pass(d: Path, f: dict[str, Any], vocab: Vocabulary, limits: TextLimits) -> None:
    """Pass 2 for one split: its token lists as title / ingredients / instructions id arrays, then the index
    files; everything fsynced before the manifest says the cache is complete."""
    n = len(f["ids"])
    shapes = {"title": (limits.max_title_tokens,),
              "ingredients": (limits.max_ingredients, limits.max_tokens),
              "instructions": (limits.max_instructions, limits.max_tokens)}
    # Rows are encoded into an in-memory block that is appended to a plain .npy file: writing through a
    # memmap would count every written page in our RSS, and indexing it row by row is slow.
    block = {k: np.zeros((_BLOCK, *shape), np.int32) for k, shape in shapes.items()}
    outs = {k: open(d / f"{k}.npy", "wb") for k in shapes}
    try:
        for k, shape in shapes.items():
            np.lib.format.write_array_header_1_0(outs[k], {
                "descr": np.lib.format.dtype_to_descr(np.dtype(np.int32)),
                "fortran_order": False, "shape": (n, *shape)})
        with open(d / "tokens.tmp.jsonl", encoding="utf-8") as tf:
            b = 0
            for line in tf:
                if b == _BLOCK:
                    _append_rows(outs, block, b)
                    b = 0
                title, ingr, instr = json.loads(line)
                encode_sequence(title, vocab, limits.max_title_tokens, block["title"][b])
                rows = block["ingredients"][b]
                for j, toks in enumerate(ingr):
                    encode_sequence(toks, vocab, limits.max_tokens, rows[j])
                rows = block["instructions"][b]
                for j, toks in enumerate(instr):
                    encode_sequence(toks, vocab, limits.max_tokens, rows[j])
                b += 1
            _append_rows(outs, block, b)
    finally:
        for fh in outs.values():
            fh.close()
    (d / "tokens.tmp.jsonl").unlink()
    np.save(d / "offsets.npy", np.asarray(f["offsets"], dtype=np.int64))
    np.save(d / "num_images.npy", np.asarray(f["num_images"], dtype=np.int32))
    (d / "ids.json").write_text(json.dumps(f["ids"], ensure_ascii=False), encoding="utf-8")
    for p in d.iterdir():  # durable before the manifest says the cache is complete
        with open(p, "rb") as done:
            os.fsync(done.fileno())
