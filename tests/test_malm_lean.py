"""Lean MALM options (benchmarks/malm_lean.py): self-distillation from the student's own whole-image pass."""

from __future__ import annotations

import pytest
import torch

from malm.errors import ConfigError
from malm.training.config import load_preset
from malm.training.losses.self_distill import MaskedDistillLoss
from malm.training.models.ema_teacher import gather_patches
from malm.training.models.masking import PatchMask
from malm.training.objectives import SelfDistillObjective, image_tokens
from malm.training.objectives.base import whole_image
from malm.training.task import Task
from tests.test_itm import SMALL, WORDS, _batch

MASKED = {**SMALL, "loss.mask.enabled": True, "loss.mask.full_image_retrieval": True, "loss.self_distill.weight": 1.0}


def _distill(task: Task) -> SelfDistillObjective:
    return next(o for o in task.objectives if isinstance(o, SelfDistillObjective))


def test_whole_image_target_is_the_students_own_stop_gradient_pass() -> None:
    cfg = load_preset("malm-tiny").with_overrides({**MASKED, "loss.self_distill.target": "whole_image"})
    g = torch.Generator().manual_seed(0)
    batch = _batch(torch.randint(0, WORDS, (64,), generator=g), torch.arange(8), noise=False, g=g)
    torch.manual_seed(0)
    task = Task(cfg, vocab_size=128).train()
    assert _distill(task).teacher is None  # no teacher pass, no EMA copy
    task.seed_step(0)
    seen = {}
    original = SelfDistillObjective.forward

    def spy(self, state):  # noqa: ANN001, ANN202
        seen["state"] = state
        return original(self, state)

    SelfDistillObjective.forward = spy  # type: ignore[method-assign]
    try:
        losses, _ = task(batch, 0.5)
    finally:
        SelfDistillObjective.forward = original  # type: ignore[method-assign]
    state = seen["state"]
    mask = PatchMask.from_keep(state.image.keep_idx, task.model.image_encoder.num_patches)
    full = whole_image(state)
    assert full is not None and full is not state.image  # the whole-image pass the retrieval embedding used
    want = MaskedDistillLoss()(_distill(task).predictor(image_tokens(state), mask.mask_idx),
                               gather_patches(full.tokens.detach(), mask.mask_idx))
    torch.testing.assert_close(losses["distill_loss"], want)
    # stop-gradient: the distillation loss alone sends no gradient through the target (the whole-image pass)
    full_tokens_grad = torch.autograd.grad(losses["distill_loss"], full.tokens, allow_unused=True)[0]
    assert full_tokens_grad is None
    task.after_step()  # nothing to update, and no error


def test_ema_target_stays_the_default_and_whole_image_needs_the_whole_image_pass() -> None:
    cfg = load_preset("malm-hybrid-tiny")
    assert cfg.loss.self_distill.target == "ema"
    assert _distill(Task(load_preset("malm-tiny").with_overrides(MASKED), vocab_size=128)).teacher is not None
    with pytest.raises(ConfigError, match="needs loss.mask.enabled and loss.mask.full_image_retrieval"):
        load_preset("malm-tiny").with_overrides({**MASKED, "loss.mask.full_image_retrieval": False,
                                                 "loss.self_distill.target": "whole_image"})
    with pytest.raises(ConfigError, match="target must be one of"):
        load_preset("malm-tiny").with_overrides({"loss.self_distill.target": "teacher"})
