"""Symmetric InfoNCE (CLIP's), the contrastive loss the retrieval objective (`loss.retrieval = "infonce"`)
and MALM's matching losses (`losses/matching.py`) are built on.

With a `gather` the negatives of sample i are every rank's samples, the same way the triplet loss sees
every GPU's negatives.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from malm.errors import MalmError

Gather = Callable[[torch.Tensor], torch.Tensor]


def check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise MalmError(f"InfoNCE temperature must be > 0, got {temperature}")


def symmetric_infonce(
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: float,
    gather: Gather | None = None,
    rank: int = 0,
) -> torch.Tensor:
    """Mean of the a→b and b→a cross-entropies over cosine logits / temperature.

    `a`, `b`: [..., N, D] with pair i at row i; leading dims are independent problems (averaged).
    With `gather` (all-gather along the N dim, with gradient) local rows contrast against all ranks' rows
    and this rank's positives sit at offset `rank * N`.
    """
    if a.shape != b.shape:
        raise MalmError(f"InfoNCE pairs must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a = F.normalize(a, dim=-1)
    b = F.normalize(b, dim=-1)
    n = a.shape[-2]
    a_all = gather(a) if gather is not None else a
    b_all = gather(b) if gather is not None else b
    offset = rank * n if gather is not None else 0
    labels = torch.arange(n, device=a.device) + offset
    logits_ab = a @ b_all.transpose(-2, -1) / temperature  # [..., N, N_all]
    logits_ba = b @ a_all.transpose(-2, -1) / temperature
    labels = labels.expand(logits_ab.shape[:-1])
    loss_ab = F.cross_entropy(logits_ab.flatten(0, -2), labels.flatten())
    loss_ba = F.cross_entropy(logits_ba.flatten(0, -2), labels.flatten())
    return 0.5 * (loss_ab + loss_ba)
