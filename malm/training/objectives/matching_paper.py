"""MALM's matching, mode "paper": the paper's global and per-patch InfoNCE over positive pairs (eqs. 6-9),
optionally with top-k decoded negatives (`pair_negatives` / `local_pairs`). Kept for the record: it is met
without the image (docs/ablation.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from malm.training.config import ExperimentConfig
from malm.training.losses.matching import GlobalMatchingLoss, LocalMatchingLoss, PairMatchingLoss
from malm.training.models.matching import MatchingOutput
from malm.training.objectives.base import Objective, TaskState, gather_and_rank, image_tokens
from malm.training.objectives.matching import matching_decoder


class PaperMatching(Objective):
    def __init__(self, config: ExperimentConfig) -> None:
        super().__init__()
        mc = config.loss.matching
        self.global_weight, self.local_weight = mc.global_weight, mc.local_weight
        self.pair_negatives, self.local_pairs = mc.pair_negatives, mc.local_pairs
        self.matching = matching_decoder(config)
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
