"""Re-ranking with known numbers: token scores worked out by hand, fusion at several weights, the candidate count.

The Retriever-level checks compare against a reference written here with plain loops (not the library's
einsum / reduceat), so a scorer that returns garbage (e.g. all zeros) disagrees with it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from _sdk_bundle import fake_recipe_encoder, make_bundle, photo, photo_features, recipe

from malm import Retriever
from malm.bundle import BundleWriter
from malm.edge_index.rerank import RerankSettings, fuse, late_interaction

N = 120


def test_late_interaction_known_scores() -> None:
    img = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)  # two patches; the second is not unit length
    recipes = [
        np.array([[3.0, 0.0]]),  # patch 1 matches (cos 1), patch 2 orthogonal (0): mean 0.5
        np.array([[1.0, 0.0], [0.0, 1.0]]),  # each patch has its own token: 1.0
        np.array([[-1.0, 0.0]]),  # patch 1 opposite (-1), patch 2 orthogonal (0): -0.5
        np.zeros((0, 2)),  # no tokens: 0
        np.array([[1.0, 1.0], [-1.0, 0.0]]),  # best for each patch is the diagonal, cos 1/sqrt(2)
    ]
    scores = late_interaction(img, recipes)
    np.testing.assert_allclose(scores, [0.5, 1.0, -0.5, 0.0, 1 / np.sqrt(2)], atol=1e-6)
    assert list(np.argsort(-scores, kind="stable")) == [1, 4, 0, 3, 2]


@pytest.mark.parametrize("w", [0.0, 0.25, 0.5, 0.8, 1.0])
def test_fuse_weights(w: float) -> None:
    g, loc = np.array([0.9, 0.5, 0.1]), np.array([0.0, 0.4, 1.0])
    np.testing.assert_allclose(fuse(g, loc, w), (1 - w) * g + w * loc, atol=1e-6)
    np.testing.assert_allclose(fuse(g, loc, w)[[0, 2]], [0.9 - 0.9 * w, 0.1 + 0.9 * w], atol=1e-6)


def test_default_candidate_count_is_50() -> None:
    assert RerankSettings(dim=3).candidates == 50 and RerankSettings(dim=3).weight == 0.5


# --------------------------------------------------------------------------------------------------- Retriever


def _ref_late(img: np.ndarray, toks: np.ndarray) -> float:
    """Mean over patches of the best cosine among the recipe's tokens, with loops."""
    if len(toks) == 0:
        return 0.0
    total = 0.0
    for p in img:
        best = -np.inf
        for t in toks:
            best = max(best, float(np.dot(p, t) / (np.linalg.norm(p) * np.linalg.norm(t))))
        total += best
    return total / len(img)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("rr") / "bundle", N)


_TOKENS: dict[int, np.ndarray] = {}


def _recipe_tokens(i: int) -> np.ndarray:
    if i not in _TOKENS:
        toks = fake_recipe_encoder()([recipe(i)]).tokens
        assert toks is not None
        _TOKENS[i] = np.asarray(toks[0], np.float16).astype(np.float32)  # the bundle stores float16
    return _TOKENS[i]


def _expected(plain: list, img_tokens: np.ndarray, w: float, candidates: int, k: int) -> list[tuple[str, float]]:
    """Re-rank the global top-`candidates` (from a plain search) by the reference fused score."""
    cands = plain[:candidates]
    fused = [(h.recipe_id, (1 - w) * h.score + w * _ref_late(img_tokens, _recipe_tokens(int(h.recipe_id[3:]))))
             for h in cands]
    return sorted(fused, key=lambda x: -x[1])[:k]


def _with_settings(bundle: Path, root: Path, **settings: float) -> Path:
    shutil.copytree(bundle, root)
    with BundleWriter(root) as bw:
        bw.manifest["rerank"].update(settings)
    return root


@pytest.mark.parametrize("w", [0.0, 0.3, 0.5, 1.0])
def test_rerank_matches_the_reference_at_several_weights(bundle: Path, tmp_path: Path, w: float) -> None:
    r = Retriever.load(_with_settings(bundle, tmp_path / "b", weight=w))
    changed = 0
    for i in (3, 17, 42):
        _, img_tokens = photo_features(i)
        plain = r.search(photo(i), k=N)
        got = r.search(photo(i), k=10, rerank=True)
        want = _expected(plain, img_tokens, w, 50, 10)
        assert [h.recipe_id for h in got] == [rid for rid, _ in want], (i, w)
        np.testing.assert_allclose([h.score for h in got], [s for _, s in want], atol=2e-3)
        changed += [h.recipe_id for h in got] != [h.recipe_id for h in plain[:10]]
    if w == 0.0:
        assert changed == 0  # weight 0 is the global order
    else:
        assert changed > 0  # the local score really moved recipes (a test of something)


def test_rerank_rescored_the_top_50_global_candidates(bundle: Path, tmp_path: Path) -> None:
    """With the default 50 candidates: recipes outside the global top 50 never come in, and those between
    k and 50 do. Checked on a photo where re-scoring k, 50 or all candidates give different answers."""
    r = Retriever.load(_with_settings(bundle, tmp_path / "b", weight=1.0))  # the local order only
    assert r._snap.rerank is not None and r._snap.rerank.settings.candidates == 50
    vs_k = vs_all = 0
    for i in range(0, N, 6):
        _, img_tokens = photo_features(i)
        plain = r.search(photo(i), k=N)
        top50 = _expected(plain, img_tokens, 1.0, 50, 5)
        got = r.search(photo(i), k=5, rerank=True)
        assert [h.recipe_id for h in got] == [rid for rid, _ in top50], i
        vs_k += [x for x, _ in top50] != [x for x, _ in _expected(plain, img_tokens, 1.0, 5, 5)]
        vs_all += [x for x, _ in top50] != [x for x, _ in _expected(plain, img_tokens, 1.0, N, 5)]
    # The photos checked do tell 50 candidates from k (5) and from all of them.
    assert vs_k > 0 and vs_all > 0, (vs_k, vs_all)


def test_fewer_candidates_from_the_manifest(bundle: Path, tmp_path: Path) -> None:
    r = Retriever.load(_with_settings(bundle, tmp_path / "b", candidates=8, weight=1.0))
    for i in (5, 9):
        _, img_tokens = photo_features(i)
        plain = r.search(photo(i), k=N)
        got = r.search(photo(i), k=4, rerank=True)
        assert {h.recipe_id for h in got} <= {h.recipe_id for h in plain[:8]}
        assert [h.recipe_id for h in got] == [rid for rid, _ in _expected(plain, img_tokens, 1.0, 8, 4)]
