"""examples/cooking_assistant holds under abuse (its own process, a real port, small limits so it runs fast):
bodies refused before they are read, pixels capped from the header, memory bounded while clients upload
large photos at once, refused adds leave the bundle byte for byte, only allowed Host names, no absolute
paths in /api/info. benchmarks/app_load.py is the full-size version (16 clients, 60-megapixel PNGs)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from _app_server import app_process, post_json, require
from _sdk_bundle import make_bundle
from PIL import Image

from benchmarks.app_load import (
    RssSampler,
    bundle_digest,
    concurrent_uploads,
    declared_but_not_sent,
    flat_png,
    png_text_bomb,
    refused_adds,
    request,
    small_jpeg,
    streamed_without_length,
    upload,
)

MAX_MP, UPLOAD_MB = 12, 2
ARGS = ("--max-megapixels", str(MAX_MP), "--max-upload-mb", str(UPLOAD_MB), "--max-added", "1")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory):
    require(("fastapi", "uvicorn", "multipart"), "MALM_SKIP_APP_TESTS", "the cooking-assistant app tests")
    root = tmp_path_factory.mktemp("limits")
    bundle = make_bundle(root / "bundle", 20, with_recipe_encoder=True)
    with app_process(bundle, root / "server.log", ARGS) as (url, proc):
        yield url, proc, bundle


def test_a_declared_huge_body_is_refused_without_reading_it(app) -> None:
    """300 MB announced, 10 bytes sent: if the server waited for the body this would time out (30 s), not 413."""
    url, _, _ = app
    answer = declared_but_not_sent(url, declared=300 * 1024 * 1024, sent=10)
    assert answer["status"] == 413, answer
    assert "limit" in answer["answer"]
    assert upload(url, small_jpeg())[0] == 200  # and the app still answers


def test_a_streamed_body_without_length_is_cut_off_at_the_limit(app) -> None:
    url, _, _ = app
    answer = streamed_without_length(url, limit=UPLOAD_MB * 1024 * 1024)
    assert answer["status"] == 413, answer
    assert answer["sent_bytes_before_answer"] < 20 * UPLOAD_MB * 1024 * 1024  # it did not read on forever


def test_pixels_are_counted_from_the_header(app) -> None:
    url, _, _ = app
    status, body, _ = upload(url, flat_png(MAX_MP + 1), "huge.png")
    assert status == 413 and "megapixels" in body["detail"] and "huge.png" in body["detail"]
    # A 6000x4000 (24 MP) JPEG decodes at 1/8 scale (750x500): under the cap as decoded, so it is answered.
    buf = io.BytesIO()
    Image.new("RGB", (6000, 4000), (90, 160, 60)).save(buf, format="JPEG", quality=80)
    status, body, _ = upload(url, buf.getvalue(), "camera.jpg")
    assert status == 200 and body["hits"], body


def test_memory_stays_bounded_while_clients_upload_large_photos_at_once(app) -> None:
    """8 clients, an 11.9-megapixel PNG each (~48 MB decoded), all at once: one decoder thread decodes them in
    turn, so the app grows by about one decoded photo, not eight (request threads decoding: ~8 x 48 MB)."""
    url, proc, _ = app
    photo = flat_png(MAX_MP - 0.1)
    rss = RssSampler(proc.pid)
    upload(url, photo, "warm.png")  # the first big decode: allocator arenas, threads
    base = rss.field_mb("VmRSS")
    with rss:
        answers = concurrent_uploads(url, photo, 8)
    assert [a[0] for a in answers] == [200] * 8, [a[1] for a in answers]
    growth = max(rss.samples) - base
    one = MAX_MP * 4  # MB, one decoded RGB photo
    assert growth < one + 80, f"RSS grew {growth:.0f} MB over {base:.0f} MB (one decoded photo: {one} MB)"


def test_png_text_chunks_are_capped(app) -> None:
    """8 PNGs of 0.2 MB, each carrying 200 MB of zTXt text, at once: refused, and the app grows by little
    (Pillow's default lets each header read inflate 64 MB: ~0.5 GB for these 8)."""
    url, proc, _ = app
    bomb = png_text_bomb()
    assert len(bomb) < 300_000
    rss = RssSampler(proc.pid)
    base = rss.field_mb("VmRSS")
    with rss:
        answers = concurrent_uploads(url, bomb, 8)
    assert [a[0] for a in answers] == [400] * 8, [a[1] for a in answers]
    assert max(rss.samples) - base < 40


def test_only_allowed_hosts_are_served(app) -> None:
    url, _, _ = app
    port = url.rsplit(":", 1)[1]
    assert request(url, "GET", "/api/info", headers={"Host": "evil.example"})[0] == 400
    assert request(url, "GET", "/api/info", headers={"Host": f"evil.example:{port}"})[0] == 400
    assert request(url, "GET", "/api/info", headers={"Host": f"localhost:{port}"})[0] == 200


def test_info_names_no_absolute_path(app) -> None:
    url, _, bundle = app
    status, info, _ = request(url, "GET", "/api/info")
    assert status == 200
    text = json.dumps(info)
    assert str(bundle.parent) not in text and str(Path.home()) not in text

    def strings(v: object) -> list[str]:
        if isinstance(v, dict):
            return [s for x in v.values() for s in strings(x)]
        if isinstance(v, list):
            return [s for x in v for s in strings(x)]
        return [v] if isinstance(v, str) else []

    assert not [s for s in strings(info) if s.startswith("/")]
    assert info["bundle"]["bundle"] == bundle.name and info["bundle"]["encoder"].startswith("encoders/")


def test_refused_adds_leave_the_bundle_byte_for_byte(app) -> None:
    url, _, bundle = app
    result = refused_adds(url, bundle)
    statuses = {name: a["status"] for name, a in result["cases"].items()}
    assert all(s in (400, 413, 422) for s in statuses.values()), statuses
    assert statuses["a 1 MB body"] == 413 and statuses["a Host that is not allowed"] == 400
    assert statuses["title of 201 characters"] == 422 and statuses["100 ingredients"] == 422
    assert result["bundle_unchanged"], result["changed"]
    # Within the limits it is added; past --max-added 1 the next one is refused, the bundle untouched.
    status, body = post_json(url + "/api/recipes", {"title": "Soup", "ingredients": ["1 tomato"]})
    assert status == 201, body
    before = bundle_digest(bundle)
    status, body = post_json(url + "/api/recipes", {"title": "More soup", "ingredients": ["1 tomato"]})
    assert status == 507 and "limit of 1" in body["detail"]
    assert bundle_digest(bundle) == before


def test_limits_are_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    require(("fastapi", "uvicorn", "multipart"), "MALM_SKIP_APP_TESTS", "the cooking-assistant app tests")

    spec = importlib.util.spec_from_file_location("cooking_app", Path(__file__).resolve().parent.parent /
                                                  "examples" / "cooking_assistant" / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "cooking_app", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    with pytest.raises(ValueError, match="decoders"):
        module.Limits(decoders=0)
    with pytest.raises(ValueError, match="max_added"):
        module.Limits(max_added=0)
    args = module.parse_args(["--bundle", "b", "--allowed-host", "192.168.1.20", "--max-megapixels", "24"])
    limits = module.limits_from(args)
    assert limits.allowed_hosts == ("127.0.0.1", "localhost", "[::1]", "192.168.1.20")
    assert limits.max_megapixels == 24
