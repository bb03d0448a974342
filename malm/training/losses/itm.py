"""Image-text matching (ITM) with sampled hard negatives, as ALBEF (`model_retrieval.py`) and T-Food
(`recipe1m/models/networks/trijoint.py`) train it.

For every image a negative recipe, for every recipe a negative image, drawn (torch.multinomial, not top-k)
from the softmax of the separate embeddings' similarity / temperature, with the positive and every
near-duplicate of it excluded (same recipe, same family, identical title: in Recipe1M and in the procedural
benchmark the hardest "negative" is often a true match). The positive pairs and the negative pairs are decoded
through the same cross-attention and a matched / not-matched head is trained with cross-entropy (label 1 for
the B positives, 0 for the 2B negatives). Each recipe sits in a positive and in a negative pair (and each
image too), so the head can only succeed by looking at both sides -- unlike the paper's positive-only InfoNCE.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from malm.errors import MalmError

# Cross-entropy of a head that ignores its input and predicts the class prior (1 positive : 2 negatives):
# the entropy of (1/3, 2/3). The loss of a head that cannot see the image stays here.
ITM_CHANCE_LOSS = -(1 / 3) * math.log(1 / 3) - (2 / 3) * math.log(2 / 3)


def near_duplicates(batch: dict[str, Tensor]) -> Tensor:
    """[B, B] bool: True where recipes i and j must not be each other's negative -- the same recipe (`index`),
    the same family (`family`, when the data knows it; -1 = unknown) or an identical title (token ids)."""
    title = batch["title"]
    same = (title[:, None, :] == title[None, :, :]).all(-1)
    if "index" in batch:
        idx = batch["index"]
        same |= idx[:, None] == idx[None, :]
    if "family" in batch:
        fam = batch["family"]
        same |= (fam[:, None] == fam[None, :]) & (fam[:, None] >= 0)
    return same | torch.eye(len(title), dtype=torch.bool, device=title.device)


def sample_negatives(sim: Tensor, exclude: Tensor, temperature: float,
                     generator: torch.Generator | None = None) -> Tensor:
    """One negative column per row of `sim` [B, C]: drawn from softmax(sim / temperature) over the entries
    `exclude` [B, C] leaves allowed. A row with nothing allowed (a batch of one family) draws uniformly among
    the other columns; returns [B] int64 on `sim`'s device. Deterministic for a given generator state."""
    if sim.shape != exclude.shape or sim.dim() != 2 or sim.shape[1] < 2:
        raise MalmError(f"sample_negatives expects sim and exclude [B, C>=2] of one shape, got "
                        f"{tuple(sim.shape)} and {tuple(exclude.shape)}")
    if not temperature > 0:
        raise MalmError(f"hard-negative temperature must be > 0, got {temperature}")
    with torch.no_grad():
        logits = (sim.detach().float() / temperature).masked_fill(exclude, float("-inf"))
        empty = exclude.all(dim=1, keepdim=True)
        # Fallback row: uniform over every column but the row's own (the diagonal when B == C).
        own = torch.eye(sim.shape[0], sim.shape[1], dtype=torch.bool, device=sim.device)
        fallback = torch.zeros_like(logits).masked_fill(own, float("-inf"))
        weights = torch.softmax(torch.where(empty, fallback, logits), dim=1)
        if generator is not None and weights.device != generator.device:
            # A device generator seeded from the CPU one: reproducible, and no host sync on the weights.
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            generator = torch.Generator(weights.device).manual_seed(seed)
        return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def pair_indices(sim: Tensor, exclude: Tensor, temperature: float,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(image rows, recipe rows) of the 3B pairs to decode -- B positives (i, i), B (image i, sampled recipe),
    B (sampled image, recipe i) -- plus the sampled negative recipe per image and image per recipe."""
    b = sim.shape[0]
    ar = torch.arange(b, device=sim.device)
    neg_rec = sample_negatives(sim, exclude, temperature, generator)
    neg_img = sample_negatives(sim.t(), exclude.t(), temperature, generator)
    return torch.cat([ar, ar, neg_img]), torch.cat([ar, neg_rec, ar]), neg_rec, neg_img


def itm_loss(logits: Tensor, positives: int) -> tuple[Tensor, Tensor]:
    """Cross-entropy of the matched / not-matched logits [N, 2] whose first `positives` rows are the matched
    pairs (label 1) and the rest not (label 0); returns (loss, accuracy)."""
    if logits.dim() != 2 or logits.shape[1] != 2 or not 0 < positives < logits.shape[0]:
        raise MalmError(f"itm_loss expects logits [N, 2] with 0 < positives < N, got {tuple(logits.shape)}, "
                        f"{positives}")
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    labels[:positives] = 1
    loss = F.cross_entropy(logits.float(), labels)
    acc = (logits.detach().argmax(1) == labels).float().mean()
    return loss, acc
