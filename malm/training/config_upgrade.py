"""Configs written by older releases, in today's keys: `upgrade_config_dict` (applied by
`ExperimentConfig.from_dict`, so every saved `config.json` loads) and the renamed dotted keys for messages.

    release before one switch per loss      today
    loss.triplet_weight                     loss.retrieval_weight (it weights the triplet or InfoNCE)
    loss.distill.{enabled, weight, ...}     loss.self_distill.{weight (0 = off), ...}
    loss.cross_decoder.enabled              loss.cross_decoder.weight (0 = off)
    loss.matching.enabled                   loss.matching.global_weight, local_weight (both 0 = off)
    loss.mask.full_image_triplet            loss.mask.full_image_retrieval
"""

from __future__ import annotations

import json
from typing import Any

# Dotted keys of older releases -> today's (for messages; `upgrade_config_dict` converts whole configs).
RENAMED_KEYS = {
    "loss.triplet_weight": "loss.retrieval_weight",
    "loss.distill": "loss.self_distill",
    "loss.distill.enabled": "loss.self_distill.weight (0 = off)",
    "loss.cross_decoder.enabled": "loss.cross_decoder.weight (0 = off)",
    "loss.matching.enabled": "loss.matching.global_weight / local_weight (0 and 0 = off)",
    "loss.mask.full_image_triplet": "loss.mask.full_image_retrieval",
}
# Switches that were an `enabled` flag beside weights: (section, its weights, their old default).
_FLAGGED_LOSSES = (("cross_decoder", ("weight",), 1.0), ("matching", ("global_weight", "local_weight"), 1.0),
                   ("self_distill", ("weight",), 1.0))


def renamed_hint(key: str) -> str:
    matches = [old for old in RENAMED_KEYS if key == old or key.startswith(old + ".")]
    return f" (renamed: {RENAMED_KEYS[max(matches, key=len)]})" if matches else ""


def upgrade_config_dict(d: Any) -> Any:
    """A config dict of an older release in today's keys (a copy; today's dicts come back equal).

    Before one switch per loss, a loss was on by `enabled` (its weight kept while off), the retrieval weight
    was `triplet_weight`, MALM's self-distillation was `distill` and `mask.full_image_triplet` named the
    whole-image retrieval pass. An old loss whose `enabled` was false (or absent: its default) gets weight 0.
    """
    if not isinstance(d, dict) or not isinstance(d.get("loss"), dict):
        return d
    d = json.loads(json.dumps(d))
    loss = d["loss"]
    legacy = "triplet_weight" in loss  # every config an older release saved has it
    if legacy:
        loss["retrieval_weight"] = loss.pop("triplet_weight")
    if "distill" in loss:
        loss["self_distill"] = loss.pop("distill")
    if isinstance(loss.get("mask"), dict) and "full_image_triplet" in loss["mask"]:
        loss["mask"]["full_image_retrieval"] = loss["mask"].pop("full_image_triplet")
    for section, weights, old_default in _FLAGGED_LOSSES:
        part = loss.get(section)
        # A missing section is off in both formats; one without `enabled` is today's format unless the
        # config is an old one (where a missing `enabled` meant its default, off).
        if not isinstance(part, dict) or not ("enabled" in part or legacy):
            continue
        enabled = part.pop("enabled", False)
        for w in weights:
            part[w] = part.get(w, old_default) if enabled else 0.0
    return d
