"""The retrieval protocol against hand-computed cases (malm.evaluation)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from malm.errors import MalmError
from malm.evaluation import format_table, metrics_from_ranks, ranks, retrieval_metrics


def test_ranks_hand_computed() -> None:
    # queries and candidates in 2-D; cosine similarity of query i to candidate j
    q = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    c = np.array([[1.0, 0.1], [1.0, 0.0], [-1.0, -1.0]])
    # q0: sims ≈ [0.995, 1.0, -0.707] → true 0.995, one better → rank 2
    # q1: sims ≈ [0.0995, 0.0, -0.707] → true 0.0, one better → rank 2
    # q2: sims ≈ [0.77, 0.707, -1.0] → true -1.0, two better → rank 3
    assert ranks(q, c).tolist() == [2, 2, 3]
    # and the other way round: candidate j as the query against all q
    # c0: [0.995, 0.0995, 0.77] → rank 1; c1: [1.0, 0.0, 0.707] → true 0.0 → rank 3; c2: [-0.7, -0.7, -1] → 3
    assert ranks(c, q).tolist() == [1, 3, 3]
    # scale does not matter (cosine)
    assert ranks(q * 7, c * 0.1).tolist() == [2, 2, 3]


def test_ties_count_in_the_querys_favour() -> None:
    same = np.ones((5, 3))
    assert ranks(same, same).tolist() == [1] * 5  # nothing strictly more similar


def test_metrics_from_ranks_hand_computed() -> None:
    m = metrics_from_ranks(np.array([1, 1, 2, 6, 11, 30]))
    assert m == {"medR": 4.0, "R@1": pytest.approx(100 * 2 / 6), "R@5": 50.0, "R@10": pytest.approx(100 * 4 / 6)}


def test_identical_embeddings_are_perfect() -> None:
    x = np.random.default_rng(0).normal(size=(1200, 16))
    r = retrieval_metrics(x, x.copy())
    for direction in ("im2recipe", "recipe2im"):
        e = r[direction]["1k"]
        assert (e["medR"], e["R@1"], e["R@5"], e["R@10"], e["subsets"]) == (1.0, 100.0, 100.0, 100.0, 10)
        assert e["medR_std"] == 0.0
    assert "10k" not in r["im2recipe"] and r["notes"] == ["size 10k skipped: only 1200 pairs"]
    assert r["protocol"] == "ht" and r["n"] == 1200 and r["sizes"] == [1000]


def test_random_embeddings_give_median_rank_near_half() -> None:
    rng = np.random.default_rng(1)
    r = retrieval_metrics(rng.normal(size=(1000, 32)), rng.normal(size=(1000, 32)), sizes=[500])
    for direction in ("im2recipe", "recipe2im"):
        e = r[direction]["500"]
        assert 200 < e["medR"] < 300 and e["R@10"] < 6 and e["medR_std"] > 0


def test_protocols_subset_counts_and_seeding() -> None:
    rng = np.random.default_rng(2)
    img, rec = rng.normal(size=(2500, 8)), rng.normal(size=(2500, 8))
    t = retrieval_metrics(img, rec, sizes=[1000], protocol="tfood")
    assert t["im2recipe"]["1k"]["subsets"] == 2 and t["subsets"] == {"1k": 2}
    assert t["notes"] == ["tfood 1k: 2 disjoint bag(s) of 1000 fit in 2500 pairs (the protocol asks for 10)"]
    assert retrieval_metrics(img, rec, sizes=[200], protocol="tfood")["subsets"] == {"200": 10}
    assert retrieval_metrics(img, rec, sizes=[2500], protocol="tfood")["subsets"] == {"2500": 1}
    h = retrieval_metrics(img, rec, sizes=[1000, 100], protocol="ht", seed=3)
    assert h["subsets"] == {"1k": 10, "100": 10} and h["notes"] == []
    assert h == retrieval_metrics(img, rec, sizes=[1000, 100], protocol="ht", seed=3)
    assert h != retrieval_metrics(img, rec, sizes=[1000, 100], protocol="ht", seed=4)
    whole = retrieval_metrics(img, rec, sizes=[2500])
    assert whole["subsets"] == {"2500": 1} and "evaluated once" in whole["notes"][0]


def test_tfood_bags_are_disjoint_and_the_mean_is_over_bags() -> None:
    # pairs 0..99 perfect, 100..199 hopeless: with two disjoint bags of 100 the mean R@1 must be the
    # mean of the two bags' R@1 — hand-check by evaluating the bags the protocol drew.
    from malm.evaluation import _subsets

    bags = _subsets(400, 100, "tfood", np.random.default_rng(0))
    assert len(bags) == 4 and len(np.unique(np.concatenate(bags))) == 400
    rng = np.random.default_rng(5)
    img = rng.normal(size=(400, 8))
    rec = np.where(np.arange(400)[:, None] % 2 == 0, img, rng.normal(size=(400, 8)))
    r = retrieval_metrics(img, rec, sizes=[100], protocol="tfood", seed=0)
    per_bag = [metrics_from_ranks(ranks(img[b], rec[b]))["R@1"] for b in bags]
    assert r["im2recipe"]["100"]["R@1"] == pytest.approx(np.mean(per_bag))
    assert r["im2recipe"]["100"]["R@1_std"] == pytest.approx(np.std(per_bag))


def test_small_data_with_default_sizes_uses_all_pairs() -> None:
    x = np.eye(300)
    r = retrieval_metrics(x, x)
    assert list(r["im2recipe"]) == ["300"] and r["im2recipe"]["300"]["R@1"] == 100.0
    assert r["notes"][:2] == ["size 1k skipped: only 300 pairs", "size 10k skipped: only 300 pairs"]


@pytest.mark.parametrize(
    ("image", "recipe", "kwargs", "message"),
    [
        (np.ones((10, 4)), np.ones((10, 4)), {"sizes": [20]}, "size 20 is larger than the 10 pairs"),
        (np.ones((10, 4)), np.ones((10, 4)), {"sizes": [1]}, "integer >= 2"),
        (np.ones((10, 4)), np.ones((10, 4)), {"protocol": "x"}, "unknown protocol"),
        (np.ones((10, 4)), np.ones((9, 4)), {}, "pair row by row"),
        (np.ones(10), np.ones(10), {}, "2-D"),
        (np.full((10, 4), np.nan), np.ones((10, 4)), {}, "NaN"),
        (np.ones((1, 4)), np.ones((1, 4)), {}, "at least 2 pairs"),
    ],
)
def test_refusals(image, recipe, kwargs, message) -> None:
    with pytest.raises(MalmError, match=message):
        retrieval_metrics(image, recipe, **kwargs)


def test_format_table() -> None:
    x = np.random.default_rng(0).normal(size=(50, 4))
    text = format_table(retrieval_metrics(x, x, sizes=[20]))
    lines = text.splitlines()
    assert lines[0] == "protocol ht, 50 pairs, seed 0"
    assert lines[1].split() == ["direction", "size", "subsets", "medR", "R@1", "R@5", "R@10"]
    assert lines[3].split() == ["im2recipe", "20", "10", "1.0", "100.00", "100.00", "100.00"]


def test_chunked_ranks_match_a_direct_computation(monkeypatch) -> None:
    import malm.evaluation as ev

    rng = np.random.default_rng(7)
    q, c = rng.normal(size=(97, 5)), rng.normal(size=(97, 5))
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    cn = c / np.linalg.norm(c, axis=1, keepdims=True)
    sims = qn @ cn.T
    direct = 1 + (sims > np.diag(sims)[:, None]).sum(1)
    monkeypatch.setattr(ev, "_BLOCK_ELEMENTS", 97 * 10)  # blocks of 10 rows
    assert ranks(q, c).tolist() == direct.tolist()


def test_evaluate_imports_numpy_only() -> None:
    code = "import malm.evaluation, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
