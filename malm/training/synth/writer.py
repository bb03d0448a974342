"""Writing a generated benchmark in exactly the Recipe1M layout.

    OUT/layer1.json     [{id, title, ingredients: [{text}], instructions: [{text}], partition, url}]
    OUT/layer2.json     [{id, images: [{id, url}]}]   (recipes with at least one photo)
    OUT/det_ingrs.json  [{id, ingredients: [{text}], valid: [bool]}]
    OUT/images/<partition>/<c0>/<c1>/<c2>/<c3>/<image id>
    OUT/synth.json      generator version, seed and counts (deterministic: no timings)
    OUT/drawn_ingredients.json  {"version", "photos": {image id: [ingredient names drawn on it]}}

`drawn_ingredients.json` is a sidecar beside the Recipe1M files (Recipe1M readers ignore it): what each photo
actually shows, for the ingredient oracle (`malm.training.synth.oracle`). Benchmarks generated before it
existed get it from `write_drawn_log`, which redraws the photos in memory (same seed, same draws).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL

from malm._atomic import write_text_atomic
from malm.errors import MalmError
from malm.training.synth.ingredients import INGREDIENTS
from malm.training.synth.recipes import PARTITIONS, RecipeSpec, generate_recipes
from malm.training.synth.render import PhotoSpec, encode_jpeg, render_logged

SYNTH_VERSION = 1
URL_ROOT = "https://synth.malm.invalid"  # .invalid: never resolves, so nobody mistakes these for real pages
MAX_RECIPES = 2_000_000
IN_PROGRESS = ".synth-in-progress"  # present while a run writes; lets --force replace an interrupted run
DRAWN_LOG = "drawn_ingredients.json"
DRAWN_LOG_VERSION = 1


@dataclass(frozen=True)
class SynthStats:
    """What a run wrote (returned by `generate`; the same counts are in OUT/synth.json)."""

    out_dir: str
    seed: int
    recipes: int
    images: int
    families: int
    per_partition: dict[str, dict[str, int]] = field(default_factory=dict)  # recipes, paired, images
    seconds: float = 0.0  # wall time of the whole run
    render_cpu_seconds: float = 0.0  # CPU time spent drawing + encoding + writing photos, all workers summed


def image_relpath(partition: str, image_id: str) -> str:
    """`images/<partition>/<c0>/<c1>/<c2>/<c3>/<image id>`, as Recipe1M nests its images."""
    return "/".join(("images", partition, *image_id[:4], image_id))


def photo_seed(seed: int, index: int, k: int) -> int:
    """The seed of photo k of recipe `index`: independent of worker count and drawing order."""
    return int.from_bytes(hashlib.sha1(f"malm-synth-photo:{seed}:{index}:{k}".encode()).digest()[:8], "big") >> 1


def _draw_and_write(spec: PhotoSpec) -> tuple[float, str, tuple[str, ...]]:
    """Draw, encode and write one photo; returns the CPU seconds it took (for benchmarks on shared machines),
    the photo's file name and the ingredients drawn on it."""
    t0 = time.process_time()
    img, drawn = render_logged(spec)
    data = encode_jpeg(img, spec.seed)
    path = Path(spec.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # temp + rename (no fsync per photo: thousands of fsyncs would dominate the run; synth.json, written
    # last and atomically, is what marks a finished data set)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return time.process_time() - t0, path.name, drawn


def _draw_only(spec: PhotoSpec) -> tuple[float, str, tuple[str, ...]]:
    """`_draw_and_write` without the file: what a photo shows, for the log of an existing benchmark."""
    t0 = time.process_time()
    drawn = render_logged(spec)[1]
    return time.process_time() - t0, Path(spec.path).name, drawn


def _photo_specs(recipes: list[RecipeSpec], out: Path, seed: int, size: int) -> Iterator[PhotoSpec]:
    for r in recipes:
        for k, image_id in enumerate(r.image_ids):
            yield PhotoSpec(r.dish, r.container, r.base, r.sauce, r.items, photo_seed(seed, r.index, k), size,
                            str(out / image_relpath(r.partition, image_id)))


def _check_args(out: Path, n_recipes: int, seed: int, image_size: int, workers: int, force: bool) -> None:
    if not 1 <= n_recipes <= MAX_RECIPES:
        raise MalmError(f"--recipes must be between 1 and {MAX_RECIPES}, got {n_recipes}")
    if seed < 0:
        raise MalmError(f"--seed must be >= 0, got {seed}")
    if not 32 <= image_size <= 1024:
        raise MalmError(f"--image-size must be between 32 and 1024 px, got {image_size}")
    if workers < 1:
        raise MalmError(f"--workers must be >= 1, got {workers}")
    if out.exists() and not out.is_dir():
        raise MalmError(f"output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        ours = (out / "synth.json").is_file() or (out / IN_PROGRESS).is_file()
        if not ours:
            raise MalmError(f"output {out} is not empty and holds no synth.json: refusing to write into it")
        if not force:
            raise MalmError(f"output {out} already holds a generated benchmark: pass --force to replace it")


def _json(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"


def write_json_files(out: Path, recipes: list[RecipeSpec], seed: int, image_size: int) -> dict[str, object]:
    """layer1.json, layer2.json, det_ingrs.json and synth.json; returns synth.json's content."""
    layer1 = [{
        "id": r.id,
        "title": r.title,
        "ingredients": [{"text": t} for t in r.ingredient_lines],
        "instructions": [{"text": t} for t in r.instructions],
        "partition": r.partition,
        "url": f"{URL_ROOT}/recipe/{r.id}",
    } for r in recipes]
    layer2 = [{
        "id": r.id,
        "images": [{"id": i, "url": f"{URL_ROOT}/image/{i}"} for i in r.image_ids],
    } for r in recipes if r.image_ids]
    det = [{
        "id": r.id,
        "ingredients": [{"text": t} for t in r.ingredient_names],
        "valid": list(r.ingredient_valid),
    } for r in recipes]
    per: dict[str, dict[str, int]] = {p: {"recipes": 0, "paired": 0, "images": 0} for p in PARTITIONS}
    dishes: dict[str, int] = {}
    for r in recipes:
        per[r.partition]["recipes"] += 1
        per[r.partition]["paired"] += bool(r.image_ids)
        per[r.partition]["images"] += len(r.image_ids)
        dishes[r.dish] = dishes.get(r.dish, 0) + 1
    meta: dict[str, object] = {
        "generator": "malm.training.synth",
        "version": SYNTH_VERSION,
        "seed": seed,
        "image_size": image_size,
        "recipes": len(recipes),
        "images": sum(len(r.image_ids) for r in recipes),
        "families": len({r.family for r in recipes}),
        "partitions": per,
        "dishes": dict(sorted(dishes.items())),
        "catalogue_ingredients": len(INGREDIENTS),
        # photos are byte-identical for the same seed under the same Pillow (libjpeg) and numpy
        "pillow": PIL.__version__,
        "numpy": np.__version__,
    }
    write_text_atomic(out / "layer1.json", _json(layer1))
    write_text_atomic(out / "layer2.json", _json(layer2))
    write_text_atomic(out / "det_ingrs.json", _json(det))
    write_text_atomic(out / "synth.json", json.dumps(meta, indent=2) + "\n")
    return meta


def _run(specs: Iterable[PhotoSpec], total: int, workers: int, progress: Callable[[int, int], None] | None,
         drawn: dict[str, tuple[str, ...]], task: Callable[[PhotoSpec], tuple[float, str, tuple[str, ...]]] = _draw_and_write,
         ) -> float:
    """Draw every photo (`task`), `workers` processes; fills `drawn` (photo file name -> ingredients drawn)."""
    done, cpu = 0, 0.0
    if workers == 1 or total < 32:
        for s in specs:
            c, name, ings = task(s)
            cpu += c
            drawn[name] = ings
            done += 1
            if progress and done % 64 == 0:
                progress(done, total)
    else:
        chunk = max(8, min(256, total // (workers * 8)))
        # forkserver: workers never inherit a parent's threads (torch, BLAS) mid-lock, as plain fork can
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else None)
        with ctx.Pool(workers) as pool:
            for c, name, ings in pool.imap_unordered(task, specs, chunksize=chunk):
                cpu += c
                drawn[name] = ings
                done += 1
                if progress and done % 256 == 0:
                    progress(done, total)
    if progress:
        progress(total, total)
    return cpu


def generate(out_dir: str | os.PathLike[str], recipes: int, seed: int, image_size: int = 128, workers: int = 2,
             force: bool = False, progress: Callable[[int, int], None] | None = None) -> SynthStats:
    """Write a procedural food benchmark of `recipes` recipes to `out_dir`, in the Recipe1M layout.

    Same arguments, same bytes (the worker count does not matter). `progress(done, total)` is called as
    photos are written. With `force`, a benchmark this generator wrote before is replaced.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    _check_args(out, recipes, seed, image_size, workers, force)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / IN_PROGRESS, "")
    # a previous benchmark (checked above): drop it so no stale photo or half-finished marker is left
    for name in ("synth.json", "layer1.json", "layer2.json", "det_ingrs.json", DRAWN_LOG):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "images", ignore_errors=True)
    specs = generate_recipes(recipes, seed)
    n_images = sum(len(r.image_ids) for r in specs)
    drawn: dict[str, tuple[str, ...]] = {}
    render_cpu = _run(_photo_specs(specs, out, seed, image_size), n_images, workers, progress, drawn)
    _write_drawn_log(out, specs, drawn, PARTITIONS)
    meta = write_json_files(out, specs, seed, image_size)
    (out / IN_PROGRESS).unlink()
    return SynthStats(out_dir=str(out), seed=seed, recipes=len(specs), images=n_images,
                      families=int(meta["families"]),  # type: ignore[call-overload]
                      per_partition=meta["partitions"],  # type: ignore[arg-type]
                      seconds=time.perf_counter() - t0, render_cpu_seconds=render_cpu)


def _write_drawn_log(out: Path, recipes: list[RecipeSpec], drawn: dict[str, tuple[str, ...]],
                     partitions: Iterable[str]) -> None:
    """OUT/drawn_ingredients.json, photos in recipe order (deterministic whatever the workers' order)."""
    parts = tuple(partitions)
    photos = {i: list(drawn[i]) for r in recipes if r.partition in parts for i in r.image_ids}
    write_text_atomic(out / DRAWN_LOG, json.dumps({"version": DRAWN_LOG_VERSION, "partitions": list(parts),
                                                   "photos": photos}, separators=(",", ":")) + "\n")


def write_drawn_log(out_dir: str | os.PathLike[str], partitions: Iterable[str] = PARTITIONS, workers: int = 2,
                    progress: Callable[[int, int], None] | None = None) -> Path:
    """Write the drawn-ingredients log of a benchmark generated without one (redraws its photos in memory,
    writes no photo). Only `partitions` are redrawn (the oracle needs the test split). Returns the log's path."""
    out = Path(out_dir)
    try:
        meta = json.loads((out / "synth.json").read_text())
        seed, n, size = int(meta["seed"]), int(meta["recipes"]), int(meta["image_size"])
        first_id = json.loads((out / "layer1.json").read_text())[0]["id"]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise MalmError(f"{out}: not a benchmark written by `malm data synth` ({e})") from None
    specs = generate_recipes(n, seed)
    if specs[0].id != first_id:  # another generator version: its photos would not be these
        raise MalmError(f"{out}: layer1.json does not match this generator's recipes for seed {seed}; regenerate it")
    parts = tuple(partitions)
    wanted = [r for r in specs if r.partition in parts]
    drawn: dict[str, tuple[str, ...]] = {}
    _run(_photo_specs(wanted, out, seed, size), sum(len(r.image_ids) for r in wanted), workers, progress, drawn,
         task=_draw_only)
    _write_drawn_log(out, wanted, drawn, parts)
    return out / DRAWN_LOG
