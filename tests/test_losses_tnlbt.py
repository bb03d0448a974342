"""TNLBT's parts: the caption loss against a naive reference, the dynamic-margin schedule, the cross decoder."""

from __future__ import annotations

import math

import pytest
import torch

from malm.errors import MalmError
from malm.training.losses.caption import CaptionLoss
from malm.training.losses.margin_schedule import MarginSchedule
from malm.training.models.cross_decoder import CrossDecoder


def test_caption_loss_matches_reference_and_ignores_pad() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 7, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([[5, 6, 2, 0], [4, 2, 0, 0]])
    loss = CaptionLoss(pad_id=0)(logits, targets)
    (grad,) = torch.autograd.grad(loss, logits)
    terms = [
        -(logits[b, t, targets[b, t]] - torch.logsumexp(logits[b, t], 0))
        for b in range(2)
        for t in range(4)
        if targets[b, t] != 0
    ]
    ref = torch.stack(terms).mean()
    (ref_grad,) = torch.autograd.grad(ref, logits)
    assert torch.allclose(loss.double(), ref, atol=1e-10)
    assert torch.allclose(grad, ref_grad, atol=1e-10)
    assert torch.all(grad[0, 3] == 0) and torch.all(grad[1, 2:] == 0)  # pad positions get no gradient


def test_caption_loss_all_pad_is_zero_and_bad_shapes_fail() -> None:
    logits = torch.randn(2, 3, 5, requires_grad=True)
    loss = CaptionLoss()(logits, torch.zeros(2, 3, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    with pytest.raises(MalmError):
        CaptionLoss()(torch.randn(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


def test_margin_schedules() -> None:
    lin = MarginSchedule(0.1, 0.3, "linear")
    assert [round(lin(t), 6) for t in (0.0, 0.25, 0.5, 1.0, 2.0, -1.0)] == [0.1, 0.15, 0.2, 0.3, 0.3, 0.1]
    cos = MarginSchedule(0.1, 0.3, "cosine")
    assert cos(0.0) == pytest.approx(0.1) and cos(1.0) == pytest.approx(0.3)
    assert cos(0.5) == pytest.approx(0.2) and cos(0.25) == pytest.approx(
        0.1 + 0.2 * (1 - math.cos(math.pi / 4)) / 2
    )
    step = MarginSchedule(0.1, 0.3, "step")  # 2 levels: start for the first half, end after
    assert [step(t) for t in (0.0, 0.49, 0.5, 1.0)] == [0.1, 0.1, pytest.approx(0.3), pytest.approx(0.3)]
    four = MarginSchedule(0.0, 0.3, "step", steps=4)
    assert [round(four(t), 6) for t in (0.0, 0.26, 0.5, 0.8, 1.0)] == [0.0, 0.1, 0.2, 0.3, 0.3]
    ts = [i / 100 for i in range(101)]
    for sched in (lin, cos, step):
        values = [sched(t) for t in ts]
        assert all(b >= a for a, b in zip(values, values[1:], strict=False))  # never decreases
    assert MarginSchedule(0.1, 0.3, "constant")(0.0) == 0.3
    with pytest.raises(MalmError):
        MarginSchedule(kind="exp")
    with pytest.raises(MalmError):
        MarginSchedule(start=-0.1)


def _decoder(**kw: object) -> CrossDecoder:
    torch.manual_seed(0)
    args = dict(
        image_width=12,
        recipe_width=10,
        vocab_size=30,
        max_len=8,
        dim=16,
        fusion_depth=1,
        decoder_depth=1,
        heads=4,
    )
    args.update(kw)
    return CrossDecoder(**args)  # type: ignore[arg-type]


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    img = torch.randn(2, 5, 12, generator=g)
    rec = torch.randn(2, 6, 10, generator=g)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    title = torch.tensor([[1, 5, 6, 7, 2, 0, 0, 0], [1, 9, 2, 0, 0, 0, 0, 0]])
    return img, rec, mask, title


def test_cross_decoder_shapes_and_causality() -> None:
    dec = _decoder().eval()
    img, rec, mask, title = _inputs()
    logits, targets = dec(img, rec, mask, title)
    assert logits.shape == (2, 7, 30) and torch.equal(targets, title[:, 1:])
    changed = title.clone()
    changed[0, 3] = 11  # input position 3 feeds predictions 3.. only
    logits2, _ = dec(img, rec, mask, changed)
    assert torch.allclose(logits[0, :3], logits2[0, :3], atol=1e-6)
    assert not torch.allclose(logits[0, 3], logits2[0, 3], atol=1e-6)


def test_cross_decoder_fuses_image_and_recipe_but_not_title_vector_or_padding() -> None:
    dec = _decoder().eval()
    img, rec, mask, title = _inputs()
    base, _ = dec(img, rec, mask, title)
    rec2 = rec.clone()
    rec2[:, 0] += 5.0  # the title component: dropped from the memory, the decoder must not copy it
    rec2[1, 4:] += 5.0  # padding of sample 1
    assert torch.allclose(base, dec(img, rec2, mask, title)[0], atol=1e-5)
    rec3 = rec.clone()
    rec3[:, 2] += 1.0  # an ingredient / instruction component does matter
    assert not torch.allclose(base, dec(img, rec3, mask, title)[0], atol=1e-4)
    assert not torch.allclose(base, dec(img + 1.0, rec, mask, title)[0], atol=1e-4)
    with_title = _decoder(drop_title=False).eval()
    assert not torch.allclose(with_title(img, rec, mask, title)[0], with_title(img, rec2, mask, title)[0])


def test_cross_decoder_learns_titles_from_fused_features() -> None:
    """Titles that depend on the image: the caption loss falls far below uniform guessing."""
    dec = _decoder()
    img, rec, mask, title = _inputs()
    opt = torch.optim.Adam(dec.parameters(), lr=3e-3)
    loss_fn = CaptionLoss()
    for _ in range(80):
        loss = loss_fn(*dec(img, rec, mask, title))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * math.log(30)


def test_cross_decoder_rejects_bad_titles() -> None:
    dec = _decoder()
    img, rec, mask, _ = _inputs()
    with pytest.raises(MalmError):
        dec(img, rec, mask, torch.ones(2, 9, dtype=torch.long))  # longer than max_len


def _class_task(source: str, n: int = 16, classes: int = 8) -> tuple[torch.Tensor, ...]:
    """Titles `<start> w_c <end>` whose word is the class c of the image (or of the recipe) alone: without
    reading that input, the best a decoder can do on w_c is uniform over the classes, loss log(8)/2 per token."""
    g = torch.Generator().manual_seed(2)
    c = torch.arange(n) % classes
    img = torch.randn(n, 5, 12, generator=g) * 0.3
    rec = torch.randn(n, 6, 10, generator=g) * 0.3
    if source == "image":
        img[torch.arange(n), :, c] += 2.0  # every patch carries the class
    else:
        rec[torch.arange(n), 2, c] += 2.0  # an ingredient component carries it (component 0, the title, is dropped)
    mask = torch.ones(n, 6, dtype=torch.bool)
    title = torch.zeros(n, 8, dtype=torch.long)
    title[:, 0], title[:, 1], title[:, 2] = 1, 10 + c, 2
    return img, rec, mask, title


@pytest.mark.parametrize("source", ["image", "recipe"])
def test_cross_decoder_reads_the_input_the_title_depends_on(source: str) -> None:
    """A decoder that ignores its inputs stays at log(8)/2 ~ 1.04 here; this one must get far below and must
    get worse again when the informative input is shuffled across samples."""
    dec = _decoder()
    img, rec, mask, title = _class_task(source)
    opt = torch.optim.Adam(dec.parameters(), lr=3e-3)
    loss_fn = CaptionLoss()
    for _ in range(150):
        loss = loss_fn(*dec(img, rec, mask, title))
        opt.zero_grad()
        loss.backward()
        opt.step()
    blind = math.log(8) / 2
    assert loss.item() < 0.15 * blind, loss.item()
    dec.eval()
    perm = torch.roll(torch.arange(len(img)), 1)  # each sample gets its neighbour's (other class) input
    with torch.no_grad():
        own = loss_fn(*dec(img, rec, mask, title)).item()
        swapped = loss_fn(*(dec(img[perm], rec, mask, title) if source == "image" else
                            dec(img, rec[perm], mask, title))).item()
    assert own < 0.15 * blind and swapped > blind, (own, swapped)
