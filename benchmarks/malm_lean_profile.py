"""Where a training step of `malm-hybrid-tiny` spends its CPU, against `ht-infonce-hybrid-tiny`.

    python benchmarks/malm_lean_profile.py --data runs/demo3k --steps 20 --out runs/lean/profile.json

Each config trains `--steps` steps through the real trainer (`compare_methods.train_one`: 1 thread, no loader
workers, stem features cached) with process-CPU timers around the forward parts (image passes, recipe encoder,
each objective, the EMA teacher's forward and update); "backward + optimizer" is the step's rest. The first
`--skip` steps are left out (allocator warm-up). Then the same for configs with one part removed, so each
part's forward *and* backward cost shows as the difference in CPU-s per step.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.ablation import Method  # noqa: E402
from benchmarks.compare_methods import train_one  # noqa: E402

MALM = {"loss.retrieval": "infonce", "loss.aux_warmup_epochs": 0.0}
CONFIGS = {
    "ht-infonce-hybrid-tiny": ("ht-infonce-hybrid-tiny", {}),
    "malm-hybrid-tiny (infonce)": ("malm-hybrid-tiny", MALM),
    "- ITM decoder (global 0, no decode)": ("malm-hybrid-tiny", {**MALM, "loss.matching.global_weight": 0.0}),
    "- self-distillation": ("malm-hybrid-tiny", {**MALM, "loss.self_distill.weight": 0.0}),
    "- whole-image pass": ("malm-hybrid-tiny", {**MALM, "loss.mask.full_image_retrieval": False}),
    "lean: ITM 0 + self-distill target whole_image": ("malm-hybrid-tiny", {
        **MALM, "loss.matching.global_weight": 0.0, "loss.self_distill.target": "whole_image"}),
    "- matching (ITM + late)": ("malm-hybrid-tiny", {**MALM, "loss.matching.global_weight": 0.0,
                                                     "loss.matching.local_weight": 0.0}),
}


class Timers:
    """Process-CPU seconds per named part, counted only while `on`."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.on = False
        self.depth = 0

    def wrap(self, owner: Any, attr: str, name: str | None = None) -> None:
        fn = getattr(owner, attr)
        label = name or f"{owner.__name__}.{attr}"
        timers = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            if not timers.on:
                return fn(*args, **kwargs)
            t0 = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                timers.sums[label] += time.process_time() - t0

        setattr(owner, attr, timed)


def instrument(timers: Timers, steps_seen: list[int], skip: int) -> None:
    from malm.training import objectives as obj
    from malm.training.models.ema_teacher import EMATeacher
    from malm.training.models.retrieval import RetrievalModel
    from malm.training.task import Task

    def image_features(self: Any, images: Any, keep: Any = None) -> Any:
        label = "image pass (masked)" if keep is not None else "image pass (whole)"
        if not timers.on:
            return orig_image(self, images, keep)
        t0 = time.process_time()
        out = orig_image(self, images, keep)
        timers.sums[label] += time.process_time() - t0
        return out

    orig_image = RetrievalModel.image_features
    RetrievalModel.image_features = image_features  # type: ignore[method-assign]
    timers.wrap(RetrievalModel, "recipe_features", "recipe encoder")
    for cls in (obj.ContrastiveRetrieval, obj.RecipeSSLObjective, obj.ItmMatching, obj.SelfDistillObjective):
        timers.wrap(cls, "forward", f"objective {cls.__name__} (fwd, incl. teacher)")
    timers.wrap(obj.ItmMatching, "late_local", "late-interaction all-pairs (fwd)")
    timers.wrap(EMATeacher, "forward", "EMA teacher forward")
    timers.wrap(EMATeacher, "update", "EMA teacher update")

    orig_forward = Task.training_forward

    def forward(self: Any, batch: Any, progress: float) -> Any:
        steps_seen[0] += 1
        if timers.on:  # the previous step ends where this one starts
            timers.sums["step total"] += time.process_time() - timers.sums.pop("_t0")
        timers.on = steps_seen[0] > skip
        if timers.on:
            timers.sums["_t0"] = time.process_time()
            t0 = time.process_time()
            out = orig_forward(self, batch, progress)
            timers.sums["forward total"] += time.process_time() - t0
            timers.sums["steps"] += 1
            return out
        return orig_forward(self, batch, progress)

    Task.training_forward = forward  # type: ignore[method-assign]


def profile(name: str, preset: str, overrides: dict[str, Any], data: Path, work: Path, steps: int,
            skip: int) -> dict[str, Any]:
    timers, seen = Timers(), [0]
    instrument(timers, seen, skip)
    train_one(Method(name, preset, overrides), 0, data, work / name.replace(" ", "_"), epochs=1000,
              stop_after_steps=steps + 1)
    timed = timers.sums.pop("steps")  # forward parts: every timed step; "step total": all but the last
    timers.sums.pop("_t0", None)
    per = {k: round(v / timed, 4) for k, v in timers.sums.items() if k != "step total"}
    per["step total"] = round(timers.sums["step total"] / (timed - 1), 4)
    per["backward + optimizer + EMA update"] = round(per["step total"] - per["forward total"], 4)
    return {"preset": preset, "overrides": overrides, "steps_timed": int(timed), "cpu_s_per_step": per}


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "lean" / "profile")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--skip", type=int, default=3)
    p.add_argument("--configs", nargs="*", default=list(CONFIGS))
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = json.loads(args.out.read_text()) if args.out.exists() else {}
    if len(args.configs) != 1:
        raise SystemExit("one --configs NAME per process (the timers wrap classes once)")
    for name in args.configs:
        preset, overrides = CONFIGS[name]
        out[name] = profile(name, preset, overrides, args.data, args.work, args.steps, args.skip)
        print(name, json.dumps(out[name]["cpu_s_per_step"]), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
