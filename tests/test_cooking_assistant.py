"""examples/cooking_assistant over HTTP: search, allergens, phone-size photos, adding a recipe, and the load
test (N concurrent uploads, every answer equal to the serial one). The browser test is beside it."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from _app_server import app_server, get_json, post_json, post_photo, require
from _sdk_bundle import make_bundle, photo
from PIL import Image

N = 30


def jpeg(img: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def phone_photo(i: int) -> bytes:
    """A 4032x3024 (12 MP) phone-camera JPEG of photo i: the dish fills the centre square that the
    centre crop keeps, as the small test photos do."""
    canvas = Image.new("RGB", (4032, 3024), (240, 240, 235))
    canvas.paste(photo(i, 48).resize((3024, 3024), Image.Resampling.NEAREST), (504, 0))
    return jpeg(canvas, 90)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    require(("fastapi", "uvicorn", "multipart"), "MALM_SKIP_APP_TESTS", "the cooking-assistant app tests")
    root = tmp_path_factory.mktemp("app")
    bundle = make_bundle(root / "bundle", N, with_recipe_encoder=True)
    with app_server(bundle, root / "server.log") as url:
        yield url


def test_info_and_no_torch(server: str) -> None:
    info = get_json(server + "/api/info")
    assert info["recipes"] == N and info["can_add"] is True
    assert info["torch_imported"] is False  # the app embeds the light SDK only
    assert "peanuts" in info["allergens"]


def test_search_finds_the_true_recipe_and_filters_allergens(server: str) -> None:
    status, body = post_photo(server + "/api/search", jpeg(photo(3, 48)), k="5")
    assert status == 200, body
    assert body["hits"][0]["recipe_id"] == "rec0003" and body["hits"][0]["title"] == "Dish number 3"
    assert body["hits"][0]["ingredients"] and [h["rank"] for h in body["hits"]] == [1, 2, 3, 4, 5]
    # rec0003 has egg (INGREDIENTS[(3*3+1) % 8] == "egg"): the egg filter leaves it out.
    status, body = post_photo(server + "/api/search", jpeg(photo(3, 48)), k="10", allergens="egg",
                              exclude="peanut butter")
    assert status == 200, body
    assert body["excluded"] == ["egg", "peanut butter"]
    text = " ".join(" ".join(h["ingredients"]) for h in body["hits"]).lower()
    assert body["hits"] and "egg" not in text and "peanut" not in text
    assert "rec0003" not in [h["recipe_id"] for h in body["hits"]]


def test_phone_size_photo(server: str) -> None:
    data = phone_photo(7)
    assert len(data) > 100_000
    status, body = post_photo(server + "/api/search", data, filename="IMG_0007.JPG", k="3")
    assert status == 200, body
    assert body["hits"][0]["recipe_id"] == "rec0007"


def test_bad_requests(server: str) -> None:
    status, body = post_photo(server + "/api/search", b"not an image at all", filename="x.jpg")
    assert status == 400 and "x.jpg" in body["detail"]
    status, body = post_photo(server + "/api/search", jpeg(photo(1, 48)), allergens="kryptonite")
    assert status == 422 and "kryptonite" in body["detail"]
    status, body = post_photo(server + "/api/search", jpeg(photo(1, 48)), k="0")
    assert status == 422
    status, body = post_json(server + "/api/recipes", {"title": "", "ingredients": []})
    assert status == 422


def test_concurrent_uploads_answer_like_serial_ones(server: str) -> None:
    photos = [jpeg(photo(i % N, 48)) for i in range(24)]
    serial = [post_photo(server + "/api/search", p, k="5") for p in photos]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(lambda p: post_photo(server + "/api/search", p, k="5"), photos))
    assert all(status == 200 for status, _ in serial)
    assert [body["hits"] for _, body in concurrent] == [body["hits"] for _, body in serial]
    assert [body["hits"][0]["recipe_id"] for _, body in serial] == [f"rec{i % N:04d}" for i in range(24)]


def test_add_a_recipe_on_the_fly(tmp_path: Path, server: str) -> None:
    before = get_json(server + "/api/info")["recipes"]
    status, body = post_json(server + "/api/recipes", {"title": "New tomato rice soup",
                                                       "ingredients": ["2 cup tomato", "1 cup rice"],
                                                       "instructions": ["cook the soup."]})
    assert status == 201, body
    assert body["recipes"] == before + 1 and body["id"].startswith("user-")
    status, found = post_photo(server + "/api/search", jpeg(photo(0, 48)), k=str(min(50, before + 1)))
    assert status == 200 and body["id"] in [h["recipe_id"] for h in found["hits"]]
    assert found["recipes"] == before + 1


def test_app_refuses_to_add_without_a_recipe_encoder(tmp_path: Path) -> None:
    require(("fastapi", "uvicorn", "multipart"), "MALM_SKIP_APP_TESTS", "the cooking-assistant app tests")
    bundle = make_bundle(tmp_path / "bundle", 10)
    with app_server(bundle, tmp_path / "server.log") as url:
        assert get_json(url + "/api/info")["can_add"] is False
        status, body = post_json(url + "/api/recipes", {"title": "x", "ingredients": ["salt"]})
        assert status == 409 and "recipe encoder" in body["detail"]
