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
