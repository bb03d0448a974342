"""MALM's matching, mode "itm": image-grounded matching with sampled hard negatives (`losses/itm.py`).

3B decoded pairs in one call, a matched / not-matched head (`itm_loss`, chance = ITM_CHANCE_LOSS ~ 0.6365),
and each patch's score in its pair contrasted against the same patch in the two negative pairs that share
its image or its recipe (`PairMatchingLoss`, chance ln 2) -- or, with `local_score = "late"`, the token-level
late-interaction score of every in-batch pair contrasted over the batch (`late_local`, chance ln of the
allowed candidates). Sampling uses `state.generator` (per rank, per step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from malm.training.config import ExperimentConfig
from malm.training.losses.itm import itm_loss, near_duplicates, pair_indices
from malm.training.losses.matching import PairMatchingLoss
from malm.training.objectives.base import Objective, TaskState, image_tokens, whole_image
from malm.training.objectives.matching import matching_decoder


class ItmMatching(Objective):
    def __init__(self, config: ExperimentConfig) -> None:
        super().__init__()
        mc = config.loss.matching
        self.global_weight, self.local_weight, self.temperature = mc.global_weight, mc.local_weight, mc.temperature
        self.matching = matching_decoder(config)
        self.pair_loss = PairMatchingLoss(mc.temperature)

    def forward(self, state: TaskState) -> dict[str, Tensor]:
        if self.global_weight == 0 and self.local_weight > 0 and self.matching.late is not None:
            # Weight 0 = off: the late score needs no decoded pairs, so none are decoded (3B decoder passes).
            return self.late_local(state)
        r = state.recipe
        tokens = image_tokens(state)
        b = tokens.shape[0]
        # Negatives from this rank's batch, by the separate (global) embeddings, near-duplicates excluded.
        sim = state.image_emb.detach() @ state.recipe_emb.detach().t()
        img_idx, rec_idx, _, _ = pair_indices(sim, near_duplicates(state.batch), self.temperature, state.generator)
        # One decoder pass over B positive and 2B negative pairs (same weights, same cross-attention).
        out = self.matching(tokens[img_idx], r.tokens[rec_idx], r.token_mask[rec_idx])
        loss, acc = itm_loss(self.matching.itm_logits(out), positives=b)
        result = {"match_itm_loss": self.global_weight * loss, "match_itm_acc": acc}
        if self.local_weight > 0 and self.matching.late is not None:
            result.update(self.late_local(state))
        elif self.local_weight > 0:
            # Patch p's score in its own pair vs in (image i, negative recipe) and in (negative image, recipe i).
            v, u = out.local_pair()
            s = F.cosine_similarity(v.float(), u.float(), dim=-1)  # [3B, P]
            pos, neg_r, neg_i = s[:b].reshape(-1), s[b:2 * b].reshape(-1, 1), s[2 * b:].reshape(-1, 1)
            result["match_local_loss"] = self.local_weight * self.pair_loss(pos, neg_r, neg_i)
        return result

    def late_local(self, state: TaskState) -> dict[str, Tensor]:
        """Late-interaction scores of every in-batch (image, recipe), symmetric InfoNCE, near-duplicates of the
        positive excluded from the negatives. The patches are the whole image's when this step encoded it (what
        re-ranking sees at test time), else the visible patches of the masked view."""
        assert self.matching.late is not None
        r = state.recipe
        full = whole_image(state)
        patches = full.tokens if full is not None else state.image.tokens
        scores = self.matching.late.all_pairs(patches, r.tokens, r.token_mask)  # [B, B]
        b = scores.shape[0]
        target = torch.arange(b, device=scores.device)
        exclude = near_duplicates(state.batch) & ~torch.eye(b, dtype=torch.bool, device=scores.device)
        logits = (scores * self.matching.late.inverse_temperature()).masked_fill(exclude, float("-inf"))
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
        acc = (logits.detach().argmax(1) == target).float().mean()
        return {"match_local_loss": self.local_weight * loss, "match_late_acc": acc,
                "match_late_temperature": 1.0 / self.matching.late.inverse_temperature().detach()}

