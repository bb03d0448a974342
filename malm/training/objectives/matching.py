"""MALM's matching decoder ψ / ψ′.

mode "itm" (default): image-grounded matching with sampled hard negatives (`losses/itm.py`): 3B decoded
pairs in one call, a matched / not-matched head (`match_itm_loss`, chance = ITM_CHANCE_LOSS ~ 0.6365), and
each patch's score in its pair contrasted against the same patch in the two negative pairs that share its
image or its recipe (`match_local_loss`, chance ln 2) -- or, with `local_score = "late"`, the token-level
late-interaction score of every in-batch pair contrasted over the batch (`late_local`, chance ln of the
allowed candidates). Sampling uses `state.generator` (per rank, per step).
mode "paper": the paper's global and per-patch InfoNCE over positive pairs (optionally top-k decoded
negatives, `pair_negatives` / `local_pairs`), kept for the record: it is met without the image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from malm.training.config import ExperimentConfig
from malm.training.losses.infonce import GlobalMatchingLoss, LocalMatchingLoss, PairMatchingLoss
from malm.training.losses.itm import itm_loss, near_duplicates, pair_indices
from malm.training.models.matching import MatchingModule, MatchingOutput
from malm.training.objectives.base import Objective, TaskState, gather_and_rank, image_tokens, whole_image


class MatchingObjective(Objective):
    def __init__(self, config: ExperimentConfig) -> None:
        super().__init__()
        mc = config.loss.matching
        self.global_weight = mc.global_weight
        self.local_weight = mc.local_weight
        self.pair_negatives = mc.pair_negatives
        self.local_pairs = mc.local_pairs
        self.mode = mc.mode
        self.temperature = mc.temperature
        self.matching = MatchingModule(
            image_width=config.model.image.width,
            recipe_width=config.model.recipe.width,
            dim=config.model.recipe.width,
            depth=mc.layers,
            heads=mc.heads,
            itm_head=mc.mode == "itm",
            late_dim=config.model.embed_dim if mc.mode == "itm" and mc.local_score == "late" else 0,
            late_temperature=mc.temperature,
        )
        self.global_loss = GlobalMatchingLoss(mc.temperature)
        self.local_loss = LocalMatchingLoss(mc.temperature)
        self.pair_loss = PairMatchingLoss(mc.temperature)

    def forward(self, state: TaskState) -> dict[str, Tensor]:
        if self.mode == "itm":
            return self.forward_itm(state)
        return self.forward_paper(state)

    def forward_itm(self, state: TaskState) -> dict[str, Tensor]:
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

    def forward_paper(self, state: TaskState) -> dict[str, Tensor]:
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
        gather, rank = gather_and_rank()
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
