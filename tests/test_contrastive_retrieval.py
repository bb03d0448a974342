"""`loss.retrieval = "infonce"`: CLIP's symmetric InfoNCE on the global embeddings in place of the triplet."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from malm.training.config import ConfigError, load_preset
from malm.training.objectives import ContrastiveRetrieval, TripletObjective, build_objectives
from malm.training.task import Task


def test_the_config_chooses_the_retrieval_loss_and_checks_it() -> None:
    base = load_preset("ht-tiny")
    task = Task(base.with_overrides({"loss.retrieval": "infonce"}), vocab_size=20)
    assert isinstance(task.objectives[0], ContrastiveRetrieval)
    assert isinstance(build_objectives(base, Task(base, vocab_size=20).model)[0], TripletObjective)
    with pytest.raises(ConfigError, match="loss.retrieval"):
        base.with_overrides({"loss.retrieval": "cosface"})
    with pytest.raises(ConfigError, match="infonce_temperature"):
        base.with_overrides({"loss.retrieval": "infonce", "loss.infonce_temperature": 0.0})
    with pytest.raises(ConfigError, match="dynamic_margin"):
        load_preset("tnlbt-tiny").with_overrides({"loss.retrieval": "infonce"})


def test_the_loss_is_the_mean_of_both_directions_cross_entropy() -> None:
    cfg = load_preset("ht-tiny").with_overrides({"loss.retrieval": "infonce", "loss.infonce_temperature": 0.1,
                                                 "loss.retrieval_weight": 2.0})
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(5, 8, generator=g), dim=1)
    rec = F.normalize(torch.randn(5, 8, generator=g), dim=1)

    class State:
        image_emb, recipe_emb = img, rec

    out = ContrastiveRetrieval(cfg.loss)(State())  # type: ignore[arg-type]
    logits = img @ rec.T / 0.1
    want = 0.5 * (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.T, torch.arange(5)))
    torch.testing.assert_close(out["infonce_loss"], 2.0 * want)
    # Pairs that match beat pairs that do not.
    aligned = ContrastiveRetrieval(cfg.loss)(type("S", (), {"image_emb": img, "recipe_emb": img})())
    assert aligned["infonce_loss"] < out["infonce_loss"]


def test_the_demo_preset_is_the_hybrid_with_infonce() -> None:
    cfg = load_preset("ht-infonce-hybrid-tiny")
    assert cfg.loss.retrieval == "infonce" and cfg.model.image.backbone == "hybrid_effnet_lite0"
    assert cfg.model.image.freeze_stem and cfg.train.stem_cache


def test_malm_hybrid_preset_is_malm_with_infonce() -> None:
    cfg = load_preset("malm-hybrid-tiny")
    assert cfg.loss.retrieval == "infonce" and cfg.model.image.backbone == "hybrid_effnet_lite0"
    assert cfg.loss.matching.enabled and cfg.loss.matching.local_score == "late"
    assert cfg.loss.mask.enabled and cfg.loss.mask.ratio == 0.75 and cfg.loss.self_distill.weight > 0
    assert cfg.loss.infonce_temperature == load_preset("ht-infonce-hybrid-tiny").loss.infonce_temperature
