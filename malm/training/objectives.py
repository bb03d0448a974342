"""The TNLBT and MALM objectives as `task.Objective`s (built by `task.build_objectives` from the config).

TNLBT: `DynamicMarginTriplet` (the triplet margin follows `loss.dynamic_margin`'s schedule) and
`CrossDecoderObjective` (fuse image tokens with recipe features, generate the title; cross-entropy).
MALM: `MatchingObjective` (ψ / ψ′ with global and per-patch InfoNCE) and `DistillObjective` (EMA teacher
on the full image, predictor on the student's mask-token-filled sequence, Smooth-L1 on masked patches).

With mask augmentation on (`loss.mask`), the task encodes only the visible patches; `image_tokens` below
re-inserts the ViT's mask token at the hidden positions, so matching sees (and matches text against) the
mask tokens, as MALM does. The teacher always sees the whole image.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from malm.errors import MalmError
from malm.training.config import ExperimentConfig, LossConfig
from malm.training.distributed import all_gather_with_grad
from malm.training.losses.caption import CaptionLoss
from malm.training.losses.infonce import Gather, GlobalMatchingLoss, LocalMatchingLoss, PairMatchingLoss
from malm.training.losses.margin_schedule import MarginSchedule
from malm.training.losses.self_distill import MaskedDistillLoss
from malm.training.models.cross_decoder import CrossDecoder
from malm.training.models.distill import EMATeacher, MaskedPredictor, gather_patches
from malm.training.models.masking import PatchMask
from malm.training.models.matching import MatchingModule, MatchingOutput
from malm.training.models.retrieval import RetrievalModel
from malm.training.task import Objective, TaskState, TripletObjective


def image_tokens(state: TaskState) -> Tensor:
    """[CLS] + all P patch tokens [B, 1+P, W]; mask tokens at the masked positions (computed once per step)."""
    if "image_tokens" not in state.shared:
        tokens = state.image.tokens
        if state.image.keep_idx is not None:
            tokens = state.model.image_encoder.fill_masked(tokens, state.image.keep_idx)
        state.shared["image_tokens"] = torch.cat([state.image.cls.unsqueeze(1), tokens], dim=1)
    return state.shared["image_tokens"]


def _gather_and_rank() -> tuple[Gather | None, int]:
    """The differentiable all-gather and this rank under DDP; (None, 0) in a single process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return all_gather_with_grad, dist.get_rank()
    return None, 0


class DynamicMarginTriplet(TripletObjective):
    """TNLBT's dynamic margins: the triplet margin grows from `start` to `end` over training."""

    def __init__(self, cfg: LossConfig) -> None:
        super().__init__(cfg)
        m = cfg.dynamic_margin
        # config "step" = two levels (start for the first half, end after): MarginSchedule's default.
        self.schedule = MarginSchedule(start=m.start, end=m.end, kind=m.schedule)

    def margin(self, progress: float) -> float:
        return self.schedule(progress)


class CrossDecoderObjective(Objective):
    def __init__(self, config: ExperimentConfig, vocab_size: int) -> None:
        super().__init__()
        cd = config.loss.cross_decoder
        if config.model.recipe.sentence_features != "learned":
            raise MalmError(
                "loss.cross_decoder generates title words and needs word tokens; it does not work with "
                "model.recipe.sentence_features='minilm'"
            )
        self.weight = cd.weight
        self.decoder = CrossDecoder(
            image_width=config.model.image.width,
            recipe_width=config.model.recipe.width,
            vocab_size=vocab_size,
            max_len=config.data.max_title_tokens,
            dim=config.model.recipe.width,
            fusion_depth=1,
            decoder_depth=cd.layers,
            heads=cd.heads,
        )
        self.loss = CaptionLoss(pad_id=0)

    def forward(self, state: TaskState) -> dict[str, Tensor]:
        r = state.recipe
        logits, targets = self.decoder(image_tokens(state), r.tokens, r.token_mask, state.batch["title"])
        return {"caption_loss": self.weight * self.loss(logits, targets)}


class MatchingObjective(Objective):
    def __init__(self, config: ExperimentConfig) -> None:
        super().__init__()
        mc = config.loss.matching
        self.global_weight = mc.global_weight
        self.local_weight = mc.local_weight
        self.pair_negatives = mc.pair_negatives
        self.local_pairs = mc.local_pairs
        self.matching = MatchingModule(
            image_width=config.model.image.width,
            recipe_width=config.model.recipe.width,
            dim=config.model.recipe.width,
            depth=mc.layers,
            heads=mc.heads,
        )
        self.global_loss = GlobalMatchingLoss(mc.temperature)
        self.local_loss = LocalMatchingLoss(mc.temperature)
        self.pair_loss = PairMatchingLoss(mc.temperature)

    def forward(self, state: TaskState) -> dict[str, Tensor]:
        r = state.recipe
        tokens = image_tokens(state)
        b = tokens.shape[0]
        k = min(self.pair_negatives, b - 1)
        img_idx = torch.arange(b, device=tokens.device)
        rec_idx = img_idx
        if k > 0:
            # The k hardest in-batch negatives by the current global embeddings (this rank's batch).
            with torch.no_grad():
                sim = (state.image_emb @ state.recipe_emb.t()).float()
                sim.fill_diagonal_(float("-inf"))
                neg_rec = sim.topk(k, dim=1).indices  # [B, k] recipes decoded with image i
                neg_img = sim.t().topk(k, dim=1).indices  # [B, k] images decoded with recipe i
            img_idx = torch.cat([img_idx, img_idx.repeat_interleave(k), neg_img.flatten()])
            rec_idx = torch.cat([rec_idx, neg_rec.flatten(), rec_idx.repeat_interleave(k)])
        # One decoder pass over the positive pairs (the first B rows) and, with k > 0, the negative pairs.
        out = self.matching(tokens[img_idx], r.tokens[rec_idx], r.token_mask[rec_idx])
        gather, rank = _gather_and_rank()
        g, h = out.global_pair()
        g, h = g.float(), h.float()
        if k > 0:
            scores = F.cosine_similarity(g, h, dim=-1)
            neg_r, neg_i = scores[b : b + b * k].view(b, k), scores[b + b * k :].view(b, k)
            global_loss = self.pair_loss(scores[:b], neg_r, neg_i)
            if self.local_pairs and self.local_weight > 0:
                # Per-patch pair scores [N, P]: patch p of image i in its own pair vs in the k negative pairs.
                v, u = out.local_pair()
                s = F.cosine_similarity(v.float(), u.float(), dim=-1)
                p = s.shape[1]
                pos = s[:b].reshape(b * p)
                lr = s[b : b + b * k].view(b, k, p).transpose(1, 2).reshape(b * p, k)
                li = s[b + b * k :].view(b, k, p).transpose(1, 2).reshape(b * p, k)
                local = self.local_weight * self.pair_loss(pos, lr, li)
                return {"match_global_loss": self.global_weight * global_loss, "match_local_loss": local}
            out = MatchingOutput(out.image[:b], out.recipe[:b], out.attention[:b], out.recipe_mask[:b])
        else:
            global_loss = self.global_loss(g, h, gather, rank)
        result = {"match_global_loss": self.global_weight * global_loss}
        if self.local_weight > 0:  # local_weight 0 is the "no local loss" ablation: skip the work too
            v, u = out.local_pair()
            result["match_local_loss"] = self.local_weight * self.local_loss(
                v.float(), u.float(), gather, rank
            )
        return result


class DistillObjective(Objective):
    teacher_ready: Tensor  # bool buffer: has the teacher copied the student yet

    def __init__(self, config: ExperimentConfig, model: RetrievalModel) -> None:
        super().__init__()
        dc = config.loss.distill
        img = config.model.image
        self.weight = dc.weight
        self.teacher = EMATeacher(model.image_encoder, decay=dc.ema_decay)
        # The teacher copies the student at the first training step, not here: pretrained weights
        # (--image-init) are loaded after the task is built. Saved with the weights, so --resume keeps it.
        self.register_buffer("teacher_ready", torch.zeros((), dtype=torch.bool))
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
            raise MalmError("loss.distill needs loss.mask.enabled: nothing is masked to predict")
        student = state.model.image_encoder
        if not bool(self.teacher_ready):
            self.teacher.encoder.load_state_dict(student.state_dict())
            self.teacher_ready.fill_(True)
        mask = PatchMask.from_keep(keep, student.num_patches)
        with torch.no_grad():
            target = gather_patches(self.teacher(state.batch["image"]).tokens, mask.mask_idx)
        prediction = self.predictor(image_tokens(state), mask.mask_idx)
        return {"distill_loss": self.weight * self.loss(prediction, target)}

    def after_step(self, model: RetrievalModel) -> None:
        self.teacher.update(model.image_encoder)


def method_objectives(config: ExperimentConfig, model: RetrievalModel) -> list[Objective]:
    """The TNLBT / MALM objectives the config turns on (the triplet is replaced by
    `DynamicMarginTriplet` in `task.build_objectives` when dynamic margins are on)."""
    loss = config.loss
    if loss.distill.enabled and not loss.mask.enabled:
        raise MalmError(
            f"config {config.name!r}: loss.distill needs loss.mask.enabled (the teacher's features are "
            "predicted at the masked patches); for the no-mask ablation set loss.distill.enabled=false too"
        )
    objectives: list[Objective] = []
    if loss.cross_decoder.enabled:
        objectives.append(CrossDecoderObjective(config, model.vocab_size))
    if loss.matching.enabled:
        objectives.append(MatchingObjective(config))
    if loss.distill.enabled:
        objectives.append(DistillObjective(config, model))
    return objectives
