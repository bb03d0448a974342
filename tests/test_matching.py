"""MALM's matching module: shapes, attention semantics against a naive computation, padding, ONNX export."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from malm.errors import MalmError
from malm.training.models.matching import Attention, MatchingModule, MatchingScorer, export_matching_onnx


def _inputs(b: int = 3, p: int = 4, s: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    img = torch.randn(b, 1 + p, 12, generator=g)
    rec = torch.randn(b, s, 10, generator=g)
    mask = torch.ones(b, s, dtype=torch.bool)
    mask[1, 3:] = False
    mask[2, 1:] = False
    return img, rec, mask


def _module(depth: int = 1) -> MatchingModule:
    torch.manual_seed(0)
    return MatchingModule(image_width=12, recipe_width=10, dim=16, depth=depth, heads=4).eval()


def test_attention_matches_naive_per_head_loop() -> None:
    torch.manual_seed(0)
    attn = Attention(8, heads=2).double()
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    mem = torch.randn(2, 4, 8, dtype=torch.float64)
    key_mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    out, weights = attn(x, mem, key_mask)
    q, k, v = attn.q(x), attn.k(mem), attn.v(mem)
    ref = torch.zeros(2, 3, 8, dtype=torch.float64)
    for b in range(2):
        valid = key_mask[b].nonzero().flatten()
        for h in range(2):
            cols = slice(4 * h, 4 * h + 4)
            for i in range(3):
                scores = torch.stack([q[b, i, cols] @ k[b, j, cols] for j in valid]) / math.sqrt(4)
                w = scores.softmax(0)
                assert torch.allclose(weights[b, h, i, valid], w) and torch.all(
                    weights[b, h, i, ~key_mask[b]] == 0
                )
                ref[b, i, cols] = sum(w[n] * v[b, j, cols] for n, j in enumerate(valid))
    assert torch.allclose(out, attn.out(ref), atol=1e-12)


@pytest.mark.parametrize("depth", [1, 2])
def test_matching_shapes_and_attention_rows(depth: int) -> None:
    m = _module(depth)
    img, rec, mask = _inputs()
    out = m(img, rec, mask)
    assert out.image.shape == (3, 5, 16) and out.recipe.shape == (3, 5, 16)
    assert out.attention.shape == (3, 4, 5)  # patches only, [CLS] row dropped
    assert torch.allclose(out.attention.sum(-1), torch.ones(3, 4), atol=1e-5)
    assert torch.all(out.attention[~mask[:, None, :].expand(-1, 4, -1)] == 0)
    g, h = out.global_pair()
    assert g.shape == (3, 16) and h.shape == (3, 16)
    assert torch.allclose(h[2], out.recipe[2, 0], atol=1e-6)  # mean over the one valid token
    v, u = out.local_pair()
    assert v.shape == (3, 4, 16) and u.shape == (3, 4, 16)
    assert torch.allclose(u[1, 2], (out.attention[1, 2, :, None] * out.recipe[1]).sum(0), atol=1e-5)


def test_matching_ignores_padded_recipe_tokens() -> None:
    m = _module(2)
    img, rec, mask = _inputs()
    base = m(img, rec, mask)
    rec2 = rec.clone()
    rec2[~mask] = 100.0
    other = m(img, rec2, mask)
    assert torch.allclose(base.image, other.image, atol=1e-5)
    g1, h1 = base.global_pair()
    g2, h2 = other.global_pair()
    assert torch.allclose(h1, h2, atol=1e-5) and torch.allclose(g1, g2, atol=1e-5)


def test_score_is_cosine_of_global_pair_and_gradients_reach_inputs() -> None:
    m = _module()
    img, rec, mask = _inputs()
    img.requires_grad_(True)
    rec.requires_grad_(True)
    score = m.score(img, rec, mask)
    g, h = m(img, rec, mask).global_pair()
    assert score.shape == (3,)
    assert torch.allclose(score, torch.nn.functional.cosine_similarity(g, h), atol=1e-6)
    score.sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0
    assert rec.grad is not None and rec.grad[~mask].abs().sum() == 0


def test_matching_rejects_bad_shapes() -> None:
    m = _module()
    img, rec, mask = _inputs()
    with pytest.raises(MalmError):
        m(img[0], rec, mask)
    with pytest.raises(MalmError):
        m(img, rec, mask[:, :2])
    with pytest.raises(MalmError):
        MatchingModule(12, 10, dim=10, heads=4)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_scorer_exports_to_onnx_and_matches_torch(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is part of the base install")
    m = _module(2)
    scorer = MatchingScorer(m).eval()
    path = tmp_path / "matching.onnx"
    export_matching_onnx(m, str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # a different batch size and recipe length than at export time
    img2, rec2, mask2 = _inputs(b=5, s=7)
    got = sess.run(
        None, {"image_tokens": img2.numpy(), "recipe_tokens": rec2.numpy(), "recipe_mask": mask2.numpy()}
    )[0]
    with torch.no_grad():
        want = scorer(img2, rec2, mask2).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_exported_head_takes_any_image_token_count_and_can_build_its_own_cls(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is part of the base install")
    m = _module(2)
    for global_token in ("given", "mean"):
        path = tmp_path / f"matching-{global_token}.onnx"
        export_matching_onnx(m, str(path), global_token=global_token)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for p in (4, 9):  # not the example's 5 image tokens
            img, rec, mask = _inputs(b=3, s=6)
            img = torch.randn(3, p, img.shape[-1])
            got = sess.run(None, {"image_tokens": img.numpy(), "recipe_tokens": rec.numpy(),
                                  "recipe_mask": mask.numpy()})[0]
            full = torch.cat([img.mean(1, keepdim=True), img], 1) if global_token == "mean" else img
            with torch.no_grad():
                want = m.score(full, rec, mask).numpy()
            np.testing.assert_allclose(got, want, atol=1e-5)


def test_pair_negatives_decode_the_hardest_negative_pairs() -> None:
    """With loss.matching.pair_negatives=k the objective scores (image i, its k hardest recipes) and
    (its k hardest images, recipe i) with the same matching head that `score` exports."""
    from types import SimpleNamespace

    from malm.training.config import load_preset
    from malm.training.objectives import PaperMatching

    cfg = load_preset("malm-tiny").with_overrides(
        {
            "model.image.width": 12,
            "model.image.heads": 2,
            "model.recipe.width": 16,
            "loss.matching.heads": 2,
            "loss.matching.mode": "paper",
            "loss.matching.pair_negatives": 2,
        }  # fmt: skip
    )
    torch.manual_seed(0)
    obj = PaperMatching(cfg).eval()
    b, p, s = 5, 4, 3
    tokens = torch.randn(b, 1 + p, 12)
    recipe = SimpleNamespace(tokens=torch.randn(b, s, 16), token_mask=torch.ones(b, s, dtype=torch.bool))
    image_emb = torch.nn.functional.normalize(torch.randn(b, 8), dim=-1)
    recipe_emb = torch.nn.functional.normalize(torch.randn(b, 8), dim=-1)
    state = SimpleNamespace(
        shared={"image_tokens": tokens}, recipe=recipe, image_emb=image_emb, recipe_emb=recipe_emb
    )
    seen = {}
    obj.pair_loss.forward = lambda pos, nr, ni: seen.update(pos=pos, nr=nr, ni=ni) or pos.sum()  # type: ignore[method-assign]
    out = obj(state)
    assert set(out) == {"match_global_loss", "match_local_loss"}
    sim = image_emb @ recipe_emb.t()
    sim.fill_diagonal_(float("-inf"))
    score = obj.matching.score
    rt, rm = recipe.tokens, recipe.token_mask
    assert torch.allclose(seen["pos"], score(tokens, rt, rm), atol=1e-5)
    for i in range(b):
        hard_r = sim[i].topk(2).indices
        hard_i = sim[:, i].topk(2).indices
        want_r = score(tokens[i : i + 1].expand(2, -1, -1), rt[hard_r], rm[hard_r])
        want_i = score(tokens[hard_i], rt[i : i + 1].expand(2, -1, -1), rm[i : i + 1].expand(2, -1))
        assert torch.allclose(seen["nr"][i], want_r, atol=1e-5)
        assert torch.allclose(seen["ni"][i], want_i, atol=1e-5)
