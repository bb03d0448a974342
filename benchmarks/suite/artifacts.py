"""The trained model the benchmark measures: given (--bundle/--checkpoint/--data), or built at tiny scale.

Built through the real commands, each step once (a marker file records it), so a re-run reuses them:

    malm data synth WORK/data --recipes N
    malm train --data WORK/data --out WORK/run --preset ht-tiny --epochs E
    malm export --checkpoint WORK/run --target onnx --int8 --tokens --data WORK/data --bundle WORK/bundle
    malm index build --checkpoint WORK/run --recipes WORK/data --bundle WORK/bundle --rerank-tokens
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from malm.errors import MalmError

if TYPE_CHECKING:
    from benchmarks.suite.context import Context

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class Artifacts:
    bundle: Path
    checkpoint: Path | None
    data: Path | None
    built: bool
    steps: dict[str, Any] = field(default_factory=dict)  # built step -> seconds and command

    def describe(self) -> dict[str, Any]:
        how = ("built by the benchmark at tiny scale (synth data, a short ht-tiny training, export): speeds are "
               "real, quality is not" if self.built else "given on the command line")
        if self.built and self.steps.get("export", {}).get("command", "").count("--student none"):
            how += "; quick: the 'student' is the teacher's own encoder exported (no distillation)"
        return {"bundle": str(self.bundle), "checkpoint": str(self.checkpoint) if self.checkpoint else None,
                "data": str(self.data) if self.data else None, "built": self.built, "steps": self.steps,
                "description": f"bundle {self.bundle} ({how})"}

    def images(self, n: int, last: bool = True) -> list[Path]:
        """Up to `n` photos from the data folder (the last ones: the synth writer puts test after train)."""
        if self.data is None:
            return []
        found = sorted(p for p in self.data.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        return found[-n:] if last else found[:n]


def _malm(args: list[str], log: Path) -> float:
    """Run one `malm` command in a child process (its own torch threads and memory); returns seconds."""
    cmd = [sys.executable, "-m", "malm.cli", *args]
    t0 = time.perf_counter()
    with open(log, "a", encoding="utf-8") as f:
        f.write("$ malm " + " ".join(args) + "\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-1500:]
        raise MalmError(f"bench: building the tiny model failed at `malm {' '.join(args)}` "
                        f"(exit {proc.returncode}); log {log}:\n{tail}")
    return time.perf_counter() - t0


def _step(ctx: Context, name: str, args: list[str], done: dict[str, Any], marker: Path, log: Path) -> None:
    if name in done:
        return
    ctx.log(f"build: malm {' '.join(args)}")
    seconds = _malm(args, log)
    done[name] = {"seconds": round(seconds, 1), "command": "malm " + " ".join(args)}
    marker.write_text(json.dumps(done, indent=2), encoding="utf-8")


def obtain(ctx: Context) -> Artifacts:
    opts = ctx.options
    if opts.bundle is not None:
        return Artifacts(bundle=opts.bundle, checkpoint=opts.checkpoint, data=opts.data, built=False)
    work = opts.work / "model"
    work.mkdir(parents=True, exist_ok=True)
    marker, log = work / "steps.json", work / "build.log"
    # Sizes: enough for every stage to run for real; small enough for the quick smoke test's budget.
    recipes, epochs, calib = (160, 1, 16) if opts.quick else (600, 2, 100)
    # Quick: export the teacher's own encoder (--student none), skipping distillation, to fit CI's budget.
    student = "none" if opts.quick else "efficientnet-lite0"
    spec = {"recipes": recipes, "epochs": epochs, "calib": calib, "preset": "ht-tiny", "seed": opts.seed,
            "student": student, "rerank": True}
    done: dict[str, Any] = {}
    if marker.is_file():
        try:
            done = json.loads(marker.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            done = {}
    if done.get("spec") != spec:
        # Nothing built here, or built with other sizes/flags: start from a clean folder (the exporter
        # refuses to mix encoders of two checkpoints in one bundle).
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        done = {}
    done["spec"] = spec
    data = opts.data or work / "data"
    run, bundle = opts.checkpoint or work / "run", work / "bundle"
    if opts.data is None:
        _step(ctx, "synth", ["data", "synth", str(data), "--recipes", str(recipes), "--seed", str(opts.seed),
                             "--image-size", "96" if opts.quick else "128"], done, marker, log)
    if opts.checkpoint is None:
        _step(ctx, "train", ["train", "--data", str(data), "--out", str(run), "--preset", "ht-tiny", "--epochs",
                             str(epochs), "--eval-size", "100", "--no-progress"], done, marker, log)
    _step(ctx, "export", ["export", "--checkpoint", str(run), "--target", "onnx", "--int8", "--data", str(data),
                          "--bundle", str(bundle), "--calib-images", str(calib), "--student", student, "--tokens",
                          # The student needs a side that is a multiple of 32 (the tiny teacher's may not be).
                          *([] if opts.quick else ["--distill-epochs", "1", "--image-size", "64"]),
                          # Quick ships the one-epoch tiny ViT's int8 whatever the export gate measures (its
                          # report keeps the numbers): the smoke run measures speed, not int8 quality.
                          *(["--accept-int8-drop"] if opts.quick else []),
                          "--eval-images", "20" if opts.quick else "200"], done, marker, log)
    # With patch tokens (export --tokens) and recipe tokens (--rerank-tokens): the re-rank stage is measured too.
    _step(ctx, "index", ["index", "build", "--checkpoint", str(run), "--recipes", str(data), "--bundle", str(bundle),
                         "--rerank-tokens"], done, marker, log)
    steps = {k: v for k, v in done.items() if k != "spec"}
    return Artifacts(bundle=bundle, checkpoint=run, data=data, built=True, steps=steps)
