"""MALM's losses against naive reference computations (forward and gradient), plus masking and EMA."""

from __future__ import annotations

import math

import pytest
import torch

from malm.errors import MalmError
from malm.training.losses.infonce import symmetric_infonce
from malm.training.losses.matching import GlobalMatchingLoss, LocalMatchingLoss, PairMatchingLoss
from malm.training.losses.self_distill import MaskedDistillLoss
from malm.training.models.ema_teacher import EMATeacher, MaskedPredictor, gather_patches
from malm.training.models.masking import PatchMask, num_masked, random_patch_mask


def _naive_infonce(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    """Sample by sample: -log softmax of the positive, both directions, averaged."""
    n = a.shape[0]
    an = [a[i] / a[i].norm() for i in range(n)]
    bn = [b[i] / b[i].norm() for i in range(n)]
    total = a.new_zeros(())
    for i in range(n):
        row_ab = torch.stack([an[i] @ bn[j] for j in range(n)]) / tau
        row_ba = torch.stack([bn[i] @ an[j] for j in range(n)]) / tau
        total = total - (row_ab[i] - torch.logsumexp(row_ab, 0)) - (row_ba[i] - torch.logsumexp(row_ba, 0))
    return total / (2 * n)


def _pair(shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    return a, b


def test_global_infonce_matches_reference_forward_and_grad() -> None:
    a, b = _pair((6, 5), 0)
    loss = GlobalMatchingLoss(temperature=0.1)(a, b)
    ga, gb = torch.autograd.grad(loss, (a, b))
    ref = _naive_infonce(a, b, 0.1)
    ra, rb = torch.autograd.grad(ref, (a, b))
    assert torch.allclose(loss, ref, atol=1e-10)
    assert torch.allclose(ga, ra, atol=1e-10) and torch.allclose(gb, rb, atol=1e-10)


def test_infonce_prefers_aligned_pairs() -> None:
    a, _ = _pair((8, 16), 1)
    aligned = symmetric_infonce(a, a + 0.01, 0.07)
    shuffled = symmetric_infonce(a, a.roll(1, 0), 0.07)
    assert aligned < 0.1 < shuffled


def test_local_infonce_is_mean_over_patches_of_per_patch_problems() -> None:
    patches, summaries = _pair((5, 4, 3), 2)  # B=5, P=4, D=3
    loss = LocalMatchingLoss(temperature=0.2)(patches, summaries)
    gp, gs = torch.autograd.grad(loss, (patches, summaries))
    ref = sum(_naive_infonce(patches[:, p], summaries[:, p], 0.2) for p in range(4)) / 4
    rp, rs = torch.autograd.grad(ref, (patches, summaries))
    assert torch.allclose(loss, ref, atol=1e-10)
    assert torch.allclose(gp, rp, atol=1e-10) and torch.allclose(gs, rs, atol=1e-10)


@pytest.mark.parametrize("local", [False, True])
def test_gathered_infonce_over_two_ranks_equals_full_batch(local: bool) -> None:
    """Simulate 2 ranks: each sees all rows via `gather`; the mean of their losses is the full-batch loss."""
    shape = (6, 3, 4) if local else (6, 4)
    a, b = _pair(shape, 3)
    loss_fn = LocalMatchingLoss(0.1) if local else GlobalMatchingLoss(0.1)
    full = loss_fn(a, b)
    halves = []
    for rank in range(2):
        sl = slice(rank * 3, rank * 3 + 3)
        # the loss gathers a, then b; other ranks contribute their (normalized, gradient-free) rows
        fulls = iter([a, b])

        def gather(x: torch.Tensor, rank: int = rank, fulls=fulls) -> torch.Tensor:
            other = torch.nn.functional.normalize(next(fulls).detach(), dim=-1)
            parts = [other[0:3], other[3:6]]
            parts[rank] = x
            return torch.cat(parts, 0)

        halves.append(loss_fn(a[sl], b[sl], gather=gather, rank=rank))
    assert torch.allclose((halves[0] + halves[1]) / 2, full, atol=1e-10)


def test_pair_matching_loss_matches_reference() -> None:
    g = torch.Generator().manual_seed(5)
    pos = torch.rand(4, generator=g, dtype=torch.float64, requires_grad=True)
    neg_r = torch.rand(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    neg_i = torch.rand(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    loss = PairMatchingLoss(temperature=0.1)(pos, neg_r, neg_i)
    grads = torch.autograd.grad(loss, (pos, neg_r, neg_i))
    ref = pos.new_zeros(())
    for i in range(4):
        for negs in (neg_r, neg_i):
            row = torch.cat([pos[i : i + 1], negs[i]]) / 0.1
            ref = ref - (row[0] - torch.logsumexp(row, 0))
    ref = ref / 8
    for a, b in zip(grads, torch.autograd.grad(ref, (pos, neg_r, neg_i)), strict=True):
        assert torch.allclose(a, b, atol=1e-10)
    assert torch.allclose(loss, ref, atol=1e-10)
    with pytest.raises(MalmError):
        PairMatchingLoss()(pos, neg_r, neg_i[:, :2])


def test_infonce_rejects_bad_input() -> None:
    with pytest.raises(MalmError):
        GlobalMatchingLoss(temperature=0.0)
    with pytest.raises(MalmError):
        symmetric_infonce(torch.zeros(3, 4), torch.zeros(3, 5), 0.1)
    with pytest.raises(MalmError):
        LocalMatchingLoss()(torch.zeros(3, 4), torch.zeros(3, 4))


def test_self_distill_matches_reference_and_stops_target_gradient() -> None:
    g = torch.Generator().manual_seed(4)
    pred = torch.randn(2, 3, 8, generator=g, dtype=torch.float64, requires_grad=True)
    target = (5 * torch.randn(2, 3, 8, generator=g, dtype=torch.float64) + 3).requires_grad_(True)
    loss = MaskedDistillLoss(beta=0.5)(pred, target)
    loss.backward()
    # reference: per-token standardization (biased variance, eps 1e-5), Smooth-L1 with beta 0.5
    t = target.detach()
    norm = (t - t.mean(-1, keepdim=True)) / torch.sqrt(t.var(-1, unbiased=False, keepdim=True) + 1e-5)
    p = pred.detach().clone().requires_grad_(True)
    d = (p - norm).abs()
    ref = torch.where(d < 0.5, 0.5 * d**2 / 0.5, d - 0.25).mean()
    ref.backward()
    assert torch.allclose(loss.double(), ref, atol=1e-6)
    assert torch.allclose(pred.grad, p.grad, atol=1e-6)
    assert target.grad is None


def test_masking_shapes_ratio_and_seed() -> None:
    torch.manual_seed(0)
    m = random_patch_mask(4, 16, 0.75)
    assert m.keep_idx.shape == (4, 4) and m.mask_idx.shape == (4, 12)
    for i in range(4):
        both = torch.cat([m.keep_idx[i], m.mask_idx[i]]).sort().values
        assert torch.equal(both, torch.arange(16))
        assert torch.equal(m.keep_idx[i], m.keep_idx[i].sort().values)
    assert m.masked.sum(1).tolist() == [12] * 4
    assert not torch.equal(m.mask_idx[0], m.mask_idx[1]) or not torch.equal(m.mask_idx[1], m.mask_idx[2])
    torch.manual_seed(0)
    again = random_patch_mask(4, 16, 0.75)
    assert torch.equal(again.mask_idx, m.mask_idx)
    gen = torch.Generator().manual_seed(7)
    assert torch.equal(
        random_patch_mask(2, 9, 0.5, generator=gen).keep_idx,
        random_patch_mask(2, 9, 0.5, generator=torch.Generator().manual_seed(7)).keep_idx,
    )
    assert num_masked(16, 0.0) == 0 and num_masked(4, 0.9) == 3  # one patch always stays visible
    with pytest.raises(MalmError):
        random_patch_mask(2, 16, 1.0)
    rebuilt = PatchMask.from_keep(m.keep_idx, 16)
    assert torch.equal(rebuilt.mask_idx, m.mask_idx) and torch.equal(rebuilt.keep_idx, m.keep_idx)


def test_masking_is_uniform_over_positions() -> None:
    torch.manual_seed(1)
    m = random_patch_mask(4000, 8, 0.5)
    freq = m.masked.float().mean(0)
    assert torch.allclose(freq, torch.full((8,), 0.5), atol=0.03)


def test_ema_teacher_update_math_and_frozen_eval() -> None:
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Dropout(0.5))
    teacher = EMATeacher(student, decay=0.9)
    before = {k: v.clone() for k, v in teacher.encoder.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
        student[1].running_mean.fill_(2.0)
    teacher.train()
    teacher.update(student)
    for name, p in student.named_parameters():
        expected = 0.9 * before[name] + 0.1 * p.detach()
        assert torch.allclose(dict(teacher.encoder.named_parameters())[name], expected, atol=1e-6)
    assert torch.equal(teacher.encoder[1].running_mean, torch.full((4,), 2.0))
    assert not teacher.encoder.training  # stays in eval (no dropout) even after .train()
    assert all(not p.requires_grad for p in teacher.parameters())
    x = torch.randn(3, 4)
    out = teacher(x)
    assert not out.requires_grad
    assert torch.equal(out, teacher(x))  # eval mode: dropout off, BatchNorm uses running stats
    with pytest.raises(MalmError):
        EMATeacher(student, decay=1.5)


def test_ema_decay_one_freezes_and_zero_copies() -> None:
    student = torch.nn.Linear(3, 3)
    frozen, copy = EMATeacher(student, 1.0), EMATeacher(student, 0.0)
    w0 = student.weight.detach().clone()
    with torch.no_grad():
        student.weight.mul_(3)
    frozen.update(student)
    copy.update(student)
    assert torch.equal(frozen.encoder.weight, w0)
    assert torch.equal(copy.encoder.weight, student.weight.detach())


def test_predictor_outputs_at_masked_positions() -> None:
    torch.manual_seed(0)
    pred = MaskedPredictor(in_width=12, out_width=10, num_tokens=1 + 9, width=16, depth=1, heads=4)
    tokens = torch.randn(2, 10, 12)
    mask_idx = torch.tensor([[0, 4, 8], [1, 2, 3]])
    out = pred(tokens, mask_idx)
    assert out.shape == (2, 3, 10)
    full = pred(tokens, torch.arange(9).expand(2, 9))
    assert torch.allclose(out, gather_patches(full, mask_idx), atol=1e-6)
    with pytest.raises(MalmError):
        pred(torch.randn(2, 7, 12), mask_idx)


def test_distillation_learns_teacher_features() -> None:
    """The predictor + loss can fit a fixed teacher target: the loss falls well below its start."""
    torch.manual_seed(0)
    pred = MaskedPredictor(8, 8, 1 + 4, width=16, depth=1, heads=2)
    loss_fn = MaskedDistillLoss()
    tokens = torch.randn(4, 5, 8)
    target = torch.randn(4, 2, 8)
    mask_idx = torch.tensor([[0, 1]] * 4)
    opt = torch.optim.Adam(pred.parameters(), lr=1e-2)
    first = math.inf
    for step in range(40):
        loss = loss_fn(pred(tokens, mask_idx), target)
        first = min(first, loss.item()) if step == 0 else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first
