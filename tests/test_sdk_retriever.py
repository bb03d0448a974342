"""`Retriever` end to end over a fake bundle with a real (tiny) ONNX image encoder."""

from __future__ import annotations

import io
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from _sdk_bundle import fake_recipe_encoder, make_bundle, photo, recipe, save_photos

from malm import Hit, Retriever
from malm.edge_index.records import RecipeRecord
from malm.errors import ImageError, MalmError

N = 60


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("sdk") / "bundle", N, with_recipe_encoder=True)


@pytest.fixture(scope="module")
def retriever(bundle: Path) -> Retriever:
    return Retriever.load(bundle, threads=1)


def test_each_photo_finds_its_recipe(retriever: Retriever, tmp_path: Path) -> None:
    paths = save_photos(tmp_path, range(N))
    results = retriever.search_batch([str(p) for p in paths], k=5)
    top1 = [r[0].recipe_id for r in results if not isinstance(r, MalmError)]
    assert top1 == [f"rec{i:04d}" for i in range(N)]
    hits = results[7]
    assert isinstance(hits, list) and [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert hits[0] == Hit(rank=1, recipe_id="rec0007", title="Dish number 7", score=hits[0].score,
                          ingredients=recipe(7).ingredients, url="http://example.com/7",
                          instructions=recipe(7).instructions)
    assert 0.8 < hits[0].score <= 1.0 and all(a.score >= b.score for a, b in zip(hits, hits[1:], strict=False))


def test_all_input_kinds_agree(retriever: Retriever, tmp_path: Path) -> None:
    path = save_photos(tmp_path, range(3, 4), fmt="PNG")[0]
    im = photo(3, 48)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    inputs: list[object] = [str(path), path, buf.getvalue(), im, np.asarray(im)]
    results = [retriever.search(x, k=3) for x in inputs]  # type: ignore[arg-type]
    assert all(r == results[0] for r in results)
    assert results[0][0].recipe_id == "rec0003"


def test_batch_with_a_bad_photo(retriever: Retriever, tmp_path: Path) -> None:
    good = save_photos(tmp_path, range(2))
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    results = retriever.search_batch([str(good[0]), str(tmp_path / "bad.jpg"), str(tmp_path / "nope.jpg"),
                                      str(good[1])], k=2)
    assert isinstance(results[1], ImageError) and "bad.jpg" in str(results[1])
    assert isinstance(results[2], ImageError) and "not found" in str(results[2])
    assert [r[0].recipe_id for r in (results[0], results[3]) if isinstance(r, list)] == ["rec0000", "rec0001"]
    with pytest.raises(ImageError, match="bad.jpg"):
        retriever.search(str(tmp_path / "bad.jpg"))


def test_exclude_ingredients(retriever: Retriever) -> None:
    # recipe 1 has "peanut butter" (INGREDIENTS[1]); excluding peanut must drop it even for its own photo.
    assert retriever.search(photo(1), k=1)[0].recipe_id == "rec0001"
    hits = retriever.search(photo(1), k=10, exclude_ingredients=["peanut"])
    assert hits and all("peanut" not in " ".join(h.ingredients) for h in hits)
    hits = retriever.search(photo(1), k=N, exclude_ingredients=["peanuts", "tomato"])
    assert all(not any(w in " ".join(h.ingredients) for w in ("peanut", "tomato")) for h in hits)


def test_rerank(retriever: Retriever, bundle: Path) -> None:
    assert retriever.can_rerank
    plain = retriever.search(photo(5), k=5)
    reranked = retriever.search(photo(5), k=5, rerank=True)
    assert reranked[0].recipe_id == "rec0005"
    # Fused scores: (1 - w) * global + w * late interaction, so they differ from the plain cosines.
    assert [h.score for h in reranked] != [h.score for h in plain]


def test_no_rerank_data_is_a_clear_error(tmp_path: Path) -> None:
    b = make_bundle(tmp_path / "plain", 10, tokens=False)
    r = Retriever.load(b)
    assert not r.can_rerank and r.search(photo(2), k=1)[0].recipe_id == "rec0002"
    with pytest.raises(MalmError, match="no re-ranking data"):
        r.search(photo(2), rerank=True)
    with pytest.raises(MalmError, match="k must be"):
        r.search(photo(2), k=0)


def test_threads_give_the_serial_answers(retriever: Retriever) -> None:
    images = [np.asarray(photo(i)) for i in range(24)]
    serial = [retriever.search(im, k=5, rerank=i % 2 == 0) for i, im in enumerate(images)]
    out: dict[int, list[Hit]] = {}
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(t, len(images), 6):
                out[i] = retriever.search(images[i], k=5, rerank=i % 2 == 0)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [out[i] for i in range(len(images))] == serial


def test_add_and_remove_on_device(bundle: Path, tmp_path: Path) -> None:
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    r = Retriever.load(b)
    # Default encoder: the bundle's ONNX recipe encoder + vocab.json (no torch, no token features).
    report = r.add_recipes([{"id": "new1", "title": "tomato soup", "ingredients": ["2 cup tomato"],
                             "instructions": ["cook"]}])
    assert report.indexed == 1 and len(r) == N + 1
    # A fake encoder that maps recipe 70 onto photo 70: the photo now finds it, re-ranked or not.
    r.add_recipes([recipe(70)], encode_fn=fake_recipe_encoder())
    assert r.search(photo(70), k=1)[0].recipe_id == "rec0070"
    assert r.search(photo(70), k=1, rerank=True)[0].recipe_id == "rec0070"
    r.remove_recipes(["rec0070", "rec0001"])
    assert len(r) == N
    ids = {h.recipe_id for h in r.search(photo(70), k=N)}
    assert "rec0070" not in ids and "rec0001" not in ids
    fresh = Retriever.load(b)  # what was written is what a new process sees
    assert fresh.search(photo(3), k=3) == r.search(photo(3), k=3)
    with pytest.raises(MalmError, match="'id'"):
        r.add_recipes([{"title": "no id"}])
    assert isinstance(recipe(1), RecipeRecord)


def test_measure(retriever: Retriever, tmp_path: Path) -> None:
    from malm.sdk.measure import measure

    paths = [str(p) for p in save_photos(tmp_path, range(6))]
    truth = [f"rec{i:04d}" for i in range(6)]
    truth[5] = "rec0059"  # a wrong label: photo 5 does not show recipe 59
    m = measure(retriever, [*paths, str(tmp_path / "missing.jpg")], [*truth, "x"], k=5)
    assert m.n == 6 and m.failed == 1 and m.recall["R@1"] == pytest.approx(500 / 6, abs=0.01)
    assert m.medr == 1.0 and m.latency_ms_p50 > 0
    with pytest.raises(MalmError, match="as many"):
        measure(retriever, paths, truth[:2])


def test_context_manager_closes_and_refuses_later_calls(bundle: Path, tmp_path: Path) -> None:
    (path,) = save_photos(tmp_path, [3])
    with Retriever.load(bundle, threads=1) as r:
        assert r.search(str(path), k=1)[0].recipe_id == "rec0003"
        store = r._snap.store
    with pytest.raises(MalmError, match="closed"):
        r.search(str(path), k=1)
    with pytest.raises(MalmError, match="closed"):
        r.embed([str(path)])
    with pytest.raises(MalmError, match="closed"):
        r.remove_recipes(["rec0001"])
    with pytest.raises(Exception, match="closed"):  # the SQLite connection itself was released
        store._conn.execute("SELECT 1")
    r.close()  # idempotent
    assert r.info()["variant"]  # still describes what it ran
