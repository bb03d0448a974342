"""The demo's report.html: self-contained, escaped, and rendered by a real headless browser (Debian chromium).

The browser test needs `chromium` on PATH (Debian: `apt-get install -y chromium`). Without it the test FAILS
with that hint; set MALM_SKIP_BROWSER_TESTS=1 to skip it knowingly (the reason is printed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from malm.demo_report import render_report, write_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
SKIP_ENV = "MALM_SKIP_BROWSER_TESTS"


def _summary(tmp_path: Path) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    queries = []
    for q in range(3):
        photo = tmp_path / f"photo{q}.jpg"
        base = np.array([200 - 60 * q, 80 + 50 * q, 40], np.float64)
        Image.fromarray(np.clip(base + rng.normal(0, 25, (96, 96, 3)), 0, 255).astype(np.uint8)).save(photo)
        true_id = f"r{q}"
        hits = [{"rank": i + 1, "recipe_id": true_id if i == q else f"x{q}{i}",
                 "title": f"<b>Dish {q}-{i}</b> & co" if i == 0 else f"Dish {q}-{i}", "score": 0.9 - 0.1 * i,
                 "ingredients": ["tomato", "basil", "olive oil"], "url": ""} for i in range(5)]
        queries.append({"photo": str(photo), "recipe_id": true_id, "title": f"True dish {q}",
                        "rank": q + 1, "ms": 3.0, "hits": hits})
    queries[2]["hits"][2]["recipe_id"] = "other"  # one photo whose true recipe is not in the top 5
    queries[2]["rank"] = None
    variants = {name: {"retrieval": {"R@1": r1, "R@5": r1 + 20, "R@10": r1 + 30, "medR": 4.0}}
                for name, r1 in (("teacher_torch_fp32", 35.2), ("image_fp32", 35.0), ("image_int8", 34.4))}
    return {"benchmark": "procedural food benchmark, 3000 recipes", "preset": "ht-hybrid-tiny",
            "export_report": {"eval_pairs": 351, "variants": variants}, "queries": queries,
            "query_top1": "1/3"}


def _metrics(tmp_path: Path) -> Path:
    path = tmp_path / "metrics.jsonl"
    lines = [{"type": "train", "step": s, "epoch": s / 60, "loss": 2.0 / (1 + s / 30)} for s in range(10, 300, 10)]
    lines += [{"type": "val", "step": 60 * e, "epoch": e, "im2recipe": {"R@1": 5.0 * e}} for e in range(1, 6)]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"cut by a kill')
    return path


class _Elements(HTMLParser):
    """Counts what the page must show, from the DOM the browser produced."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def find(self, tag: str, **attrs: str) -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == tag and all(a.get(k, "").split(" ")[0] == v if k == "class"
                                                             else a.get(k) == v for k, v in attrs.items())]


def _check_elements(html_text: str) -> None:
    page = _Elements()
    page.feed(html_text)
    assert len(page.find("div", **{"class": "query"})) == 3
    imgs = page.find("img")
    assert len(imgs) == 3 and all(a["src"].startswith("data:image/jpeg;base64,") for a in imgs)
    assert len(page.find("li", **{"class": "true"})) == 2  # the true recipe marked where it is in the top 5
    assert len(page.find("svg")) == 2 and len(page.find("polyline")) == 2
    assert {a["data-variant"] for a in page.find("tr") if "data-variant" in a} == {
        "teacher_torch_fp32", "image_fp32", "image_int8"}


def test_report_is_self_contained_and_escaped(tmp_path: Path) -> None:
    text = render_report(_summary(tmp_path), [])
    out = write_report(tmp_path / "report.html", _summary(tmp_path), _metrics(tmp_path))
    html_text = out.read_text()
    _check_elements(html_text)
    assert "&lt;b&gt;Dish 0-0&lt;/b&gt; &amp; co" in html_text and "<b>Dish" not in html_text
    # Nothing fetched from elsewhere: no http(s) URLs, no scripts, no external stylesheets.
    assert not re.search(r"(src|href)=['\"]https?:", html_text) and "<script" not in html_text
    assert "35.2" in html_text and "34.4" in html_text and "2/3" in html_text
    # An empty curve (e.g. metrics.jsonl missing) still renders.
    assert "no data" in text


def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"no headless browser ({', '.join(BROWSERS)}) and {SKIP_ENV}=1: report not checked in a browser")
    pytest.fail(f"no headless browser on PATH (tried {', '.join(BROWSERS)}): install Debian's chromium "
                f"(`apt-get install -y chromium`), or set {SKIP_ENV}=1 to skip this check knowingly")


def _chromium(browser: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240)


def test_report_renders_in_a_headless_browser(tmp_path: Path) -> None:
    browser = _browser()
    page = write_report(tmp_path / "report.html", _summary(tmp_path), _metrics(tmp_path))
    shot = tmp_path / "shot.png"
    res = _chromium(browser, tmp_path, "--window-size=1100,1400", f"--screenshot={shot}", page.as_uri())
    assert shot.is_file(), f"{browser} wrote no screenshot: {res.stderr[-1500:]}"
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert pixels.shape[:2] == (1400, 1100)
    # Not a blank page: many distinct colours (photos, chart lines, the green mark) and real contrast.
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500 and pixels.std() > 20
    assert (np.abs(pixels - [227, 246, 227]).sum(axis=-1) < 6).sum() > 1000  # the true-recipe highlight
    dom = _chromium(browser, tmp_path, "--dump-dom", page.as_uri())
    assert dom.returncode == 0 and "<html" in dom.stdout, dom.stderr[-1500:]
    _check_elements(dom.stdout)


def test_report_shows_top5_before_and_after_rerank_and_the_sdk_numbers(tmp_path: Path) -> None:
    summary = _summary(tmp_path)
    for q in summary["queries"]:  # re-ranking moves each true recipe to rank 1
        q["reranked_hits"] = [dict(h, recipe_id=q["recipe_id"] if i == 0 else f"y{i}") for i, h in enumerate(q["hits"])]
        q["reranked_rank"] = 1
    summary["shown_photos"] = "3 test photos drawn at random (seed 0) from all test recipes with a photo"
    summary["whole_index"] = {"photos": 351, "candidates": 3000, "top1_percent": 7.4, "top5_percent": 27.4, "sdk": {
        "weight": 0.3, "enabled": True, "variant": "int8_cpu", "added_ms_p50": 1.7, "note": None,
        "calibration": {"queries": 387, "top1_before": 8.0, "top1_after": 11.1, "candidates": 50},
        "global": {"top1_percent": 7.4, "top5_percent": 27.4, "ms_p50": 6.1},
        "reranked": {"top1_percent": 10.3, "top5_percent": 29.9, "ms_p50": 7.8}}}
    page = render_report(summary, [])
    assert page.count("<ol class='global'>") == 3 and page.count("<ol class='reranked'>") == 3
    assert page.count("data-reranked-rank='1'") == 3 and "at random (seed 0)" in page
    assert "id='sdk-rerank'" in page and "10.3" in page and "1.7 ms" in page and "weight <b>0.3</b>" in page
    # Off in the bundle: the page says so, and why, next to what it would have given.
    summary["whole_index"]["sdk"].update(enabled=False, note="re-ranking is disabled in this bundle (no gain)")
    del summary["whole_index"]["sdk"]["added_ms_p50"]
    page = render_report(summary, [])
    assert "off in this bundle" in page and "no gain" in page and " ms</b> per query" not in page


def test_shown_photos_are_a_seeded_random_sample() -> None:
    from malm.demo import shown_photos

    photos = [(Path(f"p{i}.jpg"), f"r{i}", f"t{i}") for i in range(351)]
    a, b = shown_photos(photos, 5, seed=0), shown_photos(photos, 5, seed=0)
    assert a == b and len(set(a)) == 5 and a != photos[:5] and shown_photos(photos, 5, seed=1) != a
    assert shown_photos(photos[:3], 5, seed=0) == shown_photos(photos[:3], 3, seed=0)  # fewer than asked: all
