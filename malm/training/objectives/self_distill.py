"""MALM's masked self-distillation: an EMA teacher on the full image, a predictor on the student's
mask-token-filled sequence, Smooth-L1 on the masked patches. With `loss.self_distill.target = "whole_image"`
the target is the student's own (stop-gradient) whole-image pass instead of the teacher's."""

from __future__ import annotations

import torch
from torch import Tensor

from malm.errors import MalmError
from malm.training.config import ExperimentConfig
from malm.training.losses.self_distill import MaskedDistillLoss
from malm.training.models.ema_teacher import EMATeacher, MaskedPredictor, gather_patches
from malm.training.models.masking import PatchMask
from malm.training.models.retrieval import RetrievalModel
from malm.training.objectives.base import Objective, TaskState, image_tokens, whole_image


class SelfDistillObjective(Objective):
    teacher_ready: Tensor  # bool buffer: has the teacher copied the student yet

    def __init__(self, config: ExperimentConfig, model: RetrievalModel) -> None:
        super().__init__()
        dc = config.loss.self_distill
        img = config.model.image
        self.weight = dc.weight
        # target "whole_image": the student's own whole-image pass is the target, so no teacher is kept.
        self.teacher = EMATeacher(model.image_encoder, decay=dc.ema_decay) if dc.target == "ema" else None
        # The teacher copies the student at the first training step, not here: pretrained weights
        # (--image-init) are loaded after the task is built. Saved with the weights, so --resume keeps it.
        self.register_buffer("teacher_ready", torch.zeros((), dtype=torch.bool))
        # Its host-side copy, so a step never reads the buffer back from the GPU; set again on load.
        self._ready = False
        self.register_load_state_dict_post_hook(lambda module, _keys: setattr(module, "_ready", bool(module.teacher_ready)))
        self.predictor = MaskedPredictor(
            in_width=img.width,
            out_width=img.width,
            num_tokens=1 + img.num_patches,
            width=img.width,
            depth=dc.predictor_layers,
            heads=img.heads,
        )
        self.loss = MaskedDistillLoss()

    def forward(self, state: TaskState) -> dict[str, Tensor]:
        keep = state.image.keep_idx
        if keep is None:
            raise MalmError("loss.self_distill needs loss.mask.enabled: nothing is masked to predict")
        student = state.model.image_encoder
        mask = PatchMask.from_keep(keep, student.num_patches)
        if self.teacher is None:
            full = whole_image(state)
            if full is None:
                raise MalmError("loss.self_distill.target 'whole_image' needs loss.mask.full_image_retrieval")
            target = gather_patches(full.tokens.detach(), mask.mask_idx)
        else:
            if not self._ready:
                self.teacher.encoder.load_state_dict(student.state_dict())
                self.teacher_ready.fill_(True)
                self._ready = True
            with torch.no_grad():
                target = gather_patches(self.teacher(state.batch["image"]).tokens, mask.mask_idx)
        prediction = self.predictor(image_tokens(state), mask.mask_idx)
        return {"distill_loss": self.weight * self.loss(prediction, target)}

    def after_step(self, model: RetrievalModel) -> None:
        if self.teacher is not None:
            self.teacher.update(model.image_encoder)
