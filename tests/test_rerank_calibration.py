"""Re-ranking calibrated through the bundle: the weight chosen on validation photos with the SDK's own scores,
recorded in the manifest, used by `search(rerank=True)`; switched off (with the reason) when it does not help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _sdk_bundle import make_bundle, photo_features, recipe, save_photos

from malm.bundle import load_manifest, verify
from malm.edge_index.builder import Encoded, build_index
from malm.edge_index.rerank import calibration, check_section, disabled_reason
from malm.errors import BundleError, MalmError
from malm.export import rerank_calibration as rc
from malm.manifest import RerankSettings
from malm.sdk import Retriever
from malm.sdk.measure import rerank_comparison

N = 60


def _encoder(emb_noise: float, tok_noise: float):  # type: ignore[no-untyped-def]
    """Recipe i = photo i's embedding and patch colours, each with its own noise (seeded per recipe)."""
    def encode(records):  # type: ignore[no-untyped-def]
        embs, toks = [], []
        for r in records:
            i = int(r.id[3:])
            emb, tok = photo_features(i)
            rng = np.random.default_rng(i)
            embs.append(emb + rng.normal(0, emb_noise, emb.shape))
            toks.append(tok[::2] + rng.normal(0, tok_noise, tok[::2].shape))
        return Encoded(np.array(embs, np.float32), toks)
    return encode


def _bundle(root: Path, emb_noise: float, tok_noise: float) -> tuple[Path, list[rc.Query]]:
    bundle = make_bundle(root / "bundle", n=N)
    build_index(bundle, [recipe(i) for i in range(N)], _encoder(emb_noise, tok_noise), M=16, ef_construction=100,
                ef_search=64)
    photos = save_photos(root / "photos", range(N))
    return bundle, [rc.Query(p, recipe(i).id) for i, p in enumerate(photos)]


def _top1(r: Retriever, queries: list[rc.Query], rerank: bool) -> float:
    hits = [r.search(str(q.photo), k=1, rerank=rerank)[0].recipe_id == q.recipe_id for q in queries]
    return round(100 * sum(hits) / len(hits), 2)


def test_weight_chosen_through_the_bundle_is_recorded_and_search_reproduces_it(tmp_path: Path) -> None:
    # Noisy global embeddings, faithful recipe tokens: the local score fixes the global ranking.
    bundle, queries = _bundle(tmp_path, emb_noise=0.35, tok_noise=0.0)
    result = rc.calibrate(bundle, queries)
    assert result["enabled"] and result["queries"] == N and result["variant"] == "fp32"
    assert result["weight"] in rc.WEIGHTS and result["top1_after"] >= result["top1_before"] + rc.MIN_GAIN
    assert result["top5_before"] - result["top5_after"] < rc.MIN_GAIN
    rc.record(bundle, result)
    verify(bundle)
    rr = load_manifest(bundle).rerank
    assert rr is not None and rr.enabled and rr.weight == result["weight"] and disabled_reason(rr) is None
    cal = calibration(rr)
    assert cal is not None and cal["top1_after"] == result["top1_after"]
    with Retriever.load(bundle, threads=1) as r:
        assert r.can_rerank and r.rerank_note is None and r.info()["rerank_weight"] == result["weight"]
        # The user's path (search with rerank=True, the recorded weight) gives exactly the calibrated numbers.
        assert _top1(r, queries, rerank=False) == result["top1_before"]
        assert _top1(r, queries, rerank=True) == result["top1_after"]
        cmp = rerank_comparison(r, [str(q.photo) for q in queries], [q.recipe_id for q in queries])
    assert cmp["enabled"] and cmp["weight"] == result["weight"]
    assert cmp["global"]["top1_percent"] == result["top1_before"]
    assert cmp["reranked"]["top1_percent"] == result["top1_after"]
    assert cmp["top1_gain_points"] > 0 and cmp["added_ms_p50"] is not None


def test_rerank_that_cannot_help_ships_disabled_with_the_reason(tmp_path: Path) -> None:
    # Exact global embeddings (top-1 is already 100%), recipe tokens of pure noise.
    bundle, queries = _bundle(tmp_path, emb_noise=0.0, tok_noise=1.0)
    result = rc.calibrate(bundle, queries)
    assert not result["enabled"] and "no fusion weight raised top-1" in result["disabled_reason"]
    rc.record(bundle, result)
    rr = load_manifest(bundle).rerank
    assert rr is not None and not rr.enabled and disabled_reason(rr) == result["disabled_reason"]
    with Retriever.load(bundle, threads=1) as r:
        assert not r.can_rerank and "disabled in this bundle" in (r.rerank_note or "")
        with pytest.raises(MalmError, match="re-ranking is disabled in this bundle .*no fusion weight"):
            r.search(str(queries[0].photo), rerank=True)
        assert r.search(str(queries[0].photo), k=1)[0].recipe_id == queries[0].recipe_id  # global still works
        cmp = rerank_comparison(r, [str(q.photo) for q in queries[:10]], [q.recipe_id for q in queries[:10]])
    assert not cmp["enabled"] and "added_ms_p50" not in cmp and "reranked" in cmp  # measured, not served
    # `malm query --rerank` says why and answers with the global search.
    proc = subprocess.run([sys.executable, "-m", "malm.cli", "query", str(queries[0].photo), "--bundle",
                           str(bundle), "--rerank", "--json", "-k", "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--rerank: " in proc.stderr and "no fusion weight raised top-1" in proc.stderr
    payload = json.loads(proc.stdout)
    assert payload["rerank"]["used"] is False and "disabled" in payload["rerank"]["note"]
    assert payload["results"][0]["hits"][0]["recipe_id"] == queries[0].recipe_id


def test_no_usable_queries_disables_rerank(tmp_path: Path) -> None:
    bundle, queries = _bundle(tmp_path, emb_noise=0.35, tok_noise=0.0)
    result = rc.calibrate(bundle, [rc.Query(q.photo, "not-indexed") for q in queries[:5]])
    assert not result["enabled"] and result["queries"] == 0 and result["not_indexed"] == 5
    assert "the recipes of the 5 val photos are not in the index" in result["disabled_reason"]
    assert "no val photos" in rc.calibrate(bundle, [])["disabled_reason"]


def test_rerank_section_reads_old_bundles_and_refuses_bad_fields() -> None:
    old = RerankSettings.from_manifest({"dim": 4, "kind": "late_interaction", "weight": 0.5})
    assert old.enabled and disabled_reason(old) is None and calibration(old) is None
    check_section(old, "old")
    new = RerankSettings.from_manifest({"dim": 4, "enabled": False, "disabled_reason": "x", "calibration": {"a": 1}})
    assert new.to_dict()["enabled"] is False and new.to_dict()["calibration"] == {"a": 1}
    assert disabled_reason(new) == "x" and calibration(new) == {"a": 1}
    for bad in ({"enabled": "no"}, {"disabled_reason": 3}, {"calibration": [1]}):
        with pytest.raises(BundleError, match="bad rerank section"):
            check_section(RerankSettings.from_manifest({"dim": 4, **bad}), "b")


def test_validation_queries_are_a_seeded_sample_of_the_val_split(tmp_path: Path) -> None:
    from _tiny_run import make_dataset

    data = make_dataset(tmp_path / "data", n_train=4, n_val=12, n_test=3)
    every = rc.validation_queries(data)
    assert len(every) == 12 and all(q.photo.is_file() for q in every)
    some = rc.validation_queries(data, limit=5)
    assert len(some) == 5 and some == rc.validation_queries(data, limit=5)
    assert {q.recipe_id for q in some} <= {q.recipe_id for q in every}
    assert rc.validation_queries(data, split="test", limit=100) != every


def test_model_card_says_the_weight_or_why_rerank_is_off(tmp_path: Path) -> None:
    from malm.model_card import render_card

    bundle, queries = _bundle(tmp_path, emb_noise=0.0, tok_noise=1.0)
    rc.record(bundle, rc.calibrate(bundle, queries[:20]))
    text = render_card(json.loads((bundle / "manifest.json").read_text()), {})
    assert "switched off (on 20 val photos through this bundle" in text
