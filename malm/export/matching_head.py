"""The trained MALM matching head (ψ, ψ′), exported to ONNX for the SDK's optional re-ranking.

The head is a training-only module: its weights live in the run's `{tag}.heads.safetensors` (saved with
each tag's weights) and in `last.state.safetensors` (the task's state), as `task.objectives.<i>.matching.*`,
not in `{best,last}.safetensors` (the retrieval model). The head must come from the same checkpoint (step)
as the encoders and the index: `load_trained_head` refuses a head of another step. It is
exported with `global_token="mean"`: it takes the image encoder's patch tokens and puts their mean in front
as the [CLS] it was trained with, because neither the edge student nor the bundle's image ONNX has a
[CLS] token (the student's tokens are distilled to the teacher's patch tokens).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from malm._atomic import atomic_path
from malm.errors import MalmError

STATE_FILE = "last.state.safetensors"
HEADS_SUFFIX = ".heads.safetensors"  # malm.training.checkpoint.HEADS_SUFFIX: {tag}.heads.safetensors
BUNDLE_PATH = "rerank/matching_head.onnx"
GLOBAL_TOKEN = "mean"


@dataclass(frozen=True)
class TrainedHead:
    module: Any  # MatchingModule (eval)
    step: int | None  # training step of the state it came from
    source: str  # file the weights came from


def _step_of(meta: Path) -> int | None:
    try:
        return int(json.loads(meta.read_text()).get("step"))
    except (OSError, ValueError, TypeError, AttributeError, json.JSONDecodeError):
        return None


def head_source(run: Path, tag: str) -> tuple[Path, int | None] | None:
    """Where the head of checkpoint `tag` is: `{tag}.heads.safetensors`, or the training state when it was
    saved at the same step as `{tag}` (runs of earlier versions, or `--tag last`). None: the run saved no head.
    Raises `MalmError` when the only head is of another step than `{tag}`'s encoders."""
    tag_step = _step_of(run / f"{tag}.json")
    own = run / f"{tag}{HEADS_SUFFIX}"
    if own.is_file():
        step = _header_step(own)
        if tag_step is not None and step is not None and step != tag_step:
            raise MalmError(f"{own}: saved at training step {step}, but {tag}.safetensors is step {tag_step} "
                            "(a training run killed between the two writes?); export --tag last, or resume "
                            "the training to write both again")
        return own, tag_step if step is None else step
    state = run / STATE_FILE
    if not state.is_file():
        return None
    state_step = _step_of(run / "last.state.json")
    if tag != "last" and (state_step is None or tag_step is None or state_step != tag_step):
        raise MalmError(f"checkpoint {run}: the matching head is saved only with the training state (step "
                        f"{state_step}), while --tag {tag} is step {tag_step}: encoders, index and re-ranking head "
                        "must come from one checkpoint. Export with --tag last (and index with --tag last), or "
                        "export without --tokens (no re-ranking); runs trained with this version save the head "
                        f"with each tag ({tag}{HEADS_SUFFIX})")
    return state, state_step


def _header_step(path: Path) -> int | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return int((f.metadata() or {}).get("step", ""))
    except ValueError:
        return None
    except Exception as e:  # noqa: BLE001 - any decode failure is a bad file
        raise MalmError(f"{path}: cannot be read ({e})") from None


def load_trained_head(run: Path, config: Any, tag: str = "last") -> TrainedHead | None:
    """The matching head trained with checkpoint `tag`, or None when the preset has no matching loss or no
    head was saved; a head of another step than `tag` is refused (`head_source`)."""
    if not getattr(getattr(config.loss, "matching", None), "enabled", False):
        return None
    source = head_source(run, tag)
    if source is None:
        return None
    path, step = source
    # on use only: loads torch
    from safetensors import safe_open

    from malm.training.models.matching import MatchingModule

    mc = config.loss.matching
    state: dict[str, Any] = {}
    try:
        with safe_open(str(path), "pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a Mapping
                head, sep, rest = key.partition(".matching.")
                if sep and head.startswith("task.objectives."):
                    state[rest] = f.get_tensor(key)
    except Exception as e:  # noqa: BLE001 - any decode failure is a bad state file
        raise MalmError(f"{path}: cannot be read ({e})") from None
    if not state:
        return None
    # Built exactly as the training objective builds it (objectives.MatchingObjective). Whether it has the
    # ITM head is read from the weights: a run trained before loss.matching.mode existed has none (its
    # config loads as "itm" by default) and keeps its cosine score.
    module = MatchingModule(image_width=config.model.image.width, recipe_width=config.model.recipe.width,
                            dim=config.model.recipe.width, depth=mc.layers, heads=mc.heads,
                            itm_head=any(k.startswith("itm.") for k in state),
                            late_dim=int(state["late.image_in.weight"].shape[0]) if "late.image_in.weight" in state
                            else 0)
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise MalmError(f"{path}: matching head weights do not fit the config (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})")
    return TrainedHead(module.eval(), step, str(path))


def score_kind(module: Any) -> str:
    """What the exported `score` is: "late_interaction" (the trained token-level score, loss.matching.local_score
    "late"), "itm_probability" (the matched probability of the ITM head) or "cosine" (a mode "paper" head, or
    one trained before the ITM head existed)."""
    if getattr(module, "late", None) is not None:
        return "late_interaction"
    return "itm_probability" if getattr(module, "itm", None) is not None else "cosine"


def export_head(head: TrainedHead, out: Path, metadata: dict[str, str], image_tokens: int = 4,
                recipe_tokens: int = 9) -> dict[str, Any]:
    """Write the head's ONNX to `out` (atomically) and check it against torch; returns the manifest entry."""
    # on use only: loads torch
    import torch

    from malm.export.onnx_export import set_metadata
    from malm.training.models.matching import MatchingScorer, export_matching_onnx

    with tempfile.TemporaryDirectory(prefix="malm-head-") as tmp:
        raw = Path(tmp) / "head.onnx"
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript exporter deprecation noise
            export_matching_onnx(head.module, str(raw), global_token=GLOBAL_TOKEN)
        set_metadata(raw, {**metadata, "role": "rerank", "global_token": GLOBAL_TOKEN, "image_tokens": "patches",
                           "score": score_kind(head.module)})
        with atomic_path(out) as dst:
            dst.write_bytes(raw.read_bytes())
    # Parity on random tokens of other sizes than the export example (the dynamic axes).
    g = torch.Generator().manual_seed(0)
    wi, wr = head.module.image_in.in_features, head.module.recipe_in.in_features
    img = torch.randn(3, image_tokens, wi, generator=g)
    rec = torch.randn(3, recipe_tokens, wr, generator=g)
    mask = torch.ones(3, recipe_tokens, dtype=torch.bool)
    mask[1, recipe_tokens // 2:] = False
    with torch.no_grad():
        want = MatchingScorer(head.module, GLOBAL_TOKEN)(img, rec, mask).numpy()
    # on use only: loads torch
    from malm.export.onnx_export import session

    got = session(out).run(["score"], {"image_tokens": img.numpy(), "recipe_tokens": rec.numpy(),
                                       "recipe_mask": mask.numpy()})[0]
    err = float(np.abs(got - want).max())
    if score_kind(head.module) == "late_interaction":
        # The SDK feeds a late head the photo's tokens once ([1, P, D]) and lets the graph broadcast them over
        # the candidates: that must give the same scores as one copy per candidate.
        once = session(out).run(["score"], {"image_tokens": img.numpy()[:1], "recipe_tokens": rec.numpy(),
                                            "recipe_mask": mask.numpy()})[0]
        full = session(out).run(["score"], {"image_tokens": np.repeat(img.numpy()[:1], 3, axis=0),
                                            "recipe_tokens": rec.numpy(), "recipe_mask": mask.numpy()})[0]
        err = max(err, float(np.abs(once - full).max()))
    if not err < 1e-4:
        raise MalmError(f"ONNX export of the matching head failed its parity check (max |diff| {err:.2e})")
    return {"file": BUNDLE_PATH, "kind": "onnx", "role": "rerank", "precision": "fp32", "score": score_kind(head.module),
            "global_token": GLOBAL_TOKEN, "image_tokens": "patches", "parity_max_abs": err,
            "state_step": head.step, "source": Path(head.source).name}
