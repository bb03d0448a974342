"""The H-T losses against naive loop computations (forward and gradient), seeded."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from malm.training.losses import RecipeSelfSupervisedLoss, TripletLoss


def naive_triplet(img: torch.Tensor, rec: torch.Tensor, margin: float, hard: bool) -> torch.Tensor:
    n = img.shape[0]
    total = torch.zeros((), dtype=torch.float64)
    for a_emb, c_emb in ((img, rec), (rec, img)):
        costs = []
        for i in range(n):
            pos = 1 - torch.dot(a_emb[i], c_emb[i])  # cosine distance (unit vectors)
            row = []
            for j in range(n):
                if j != i:
                    neg = 1 - torch.dot(a_emb[i], c_emb[j])
                    row.append(torch.clamp(margin + pos - neg, min=0))
            costs.append(row)
        if hard:
            total = total + sum(max(row, key=lambda t: t.item()) for row in costs) / n
        else:
            flat = [c for row in costs for c in row]
            violating = sum(1 for c in flat if c.item() > 0)
            total = total + sum(flat) / max(violating, 1)
    return total


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("margin", [0.3, 0.1])
def test_triplet_matches_naive_loop(hard: bool, margin: float) -> None:
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(6, 8, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    rec = F.normalize(torch.randn(6, 8, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    loss = TripletLoss(margin=0.3, hard_negative=hard)(img, rec, margin=margin)
    ref = naive_triplet(img, rec, margin, hard)
    assert loss.item() > 0
    torch.testing.assert_close(loss.double(), ref)
    g1 = torch.autograd.grad(loss, (img, rec))
    g2 = torch.autograd.grad(ref, (img, rec))
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a.double(), b)


def test_triplet_zero_when_pairs_are_separated() -> None:
    e = torch.eye(4)
    assert TripletLoss(margin=0.3)(e, e).item() == 0.0  # s(i,i)=1, s(i,j)=0: margin satisfied


def test_recipe_ssl_matches_naive_loop() -> None:
    torch.manual_seed(0)
    width, n = 8, 5
    loss_fn = RecipeSelfSupervisedLoss(width, margin=0.3).double()
    comps = {
        k: torch.randn(n, width, dtype=torch.float64, requires_grad=True)
        for k in ("title", "ingredients", "instructions")
    }
    loss = loss_fn(comps)
    ref = torch.zeros((), dtype=torch.float64)
    pairs = list(itertools.permutations(comps, 2))
    assert len(pairs) == 6
    for a, b in pairs:
        head = loss_fn.heads[f"{a}_to_{b}"]
        src = F.normalize(comps[a] @ head.weight.t() + head.bias, dim=1)
        ref = ref + naive_triplet(src, F.normalize(comps[b], dim=1), 0.3, hard=False)
    ref = ref / 6
    torch.testing.assert_close(loss.double(), ref)
    params = [comps["title"], loss_fn.heads["ingredients_to_title"].weight]
    for x, y in zip(torch.autograd.grad(loss, params), torch.autograd.grad(ref, params), strict=True):
        torch.testing.assert_close(x.double(), y)
