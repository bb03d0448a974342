"""The cooking assistant as an offline web app (examples/cooking_assistant/web) in headless chromium.

Static files only: the app, the built client (lib/) and a web bundle (`malm bundle web`) served from
127.0.0.1. The page loads, a photo finds its recipe, the allergen filter takes recipes out; then the network
is cut and, after a reload, the service worker's cache answers the same. A tampered bundle is refused with
a clear message on the page. A recipe added on the phone joins the index.
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
from _app_server import require
from _sdk_bundle import make_bundle, save_photos
from _static_server import REPO, client_dist, static_server
from test_cooking_assistant_browser import CHROMIUM_ARGS, chromium_path

from malm.web_bundle import export_web

WEB = REPO / "examples" / "cooking_assistant" / "web"
APP_FILES = ("index.html", "app.js", "sw.js", "manifest.webmanifest", "icon.svg", "allergens.json")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    require(("playwright",), "MALM_SKIP_BROWSER_TESTS", "browser tests")
    executable = chromium_path()
    dist = client_dist()
    root = tmp_path_factory.mktemp("webapp")
    bundle = make_bundle(root / "bundle", 30, with_recipe_encoder=True)
    www = root / "www"
    www.mkdir()
    for name in APP_FILES:
        shutil.copy(WEB / name, www / name)
    shutil.copytree(dist, www / "lib")
    export_web(bundle, www / "bundle")
    from playwright.sync_api import sync_playwright

    with static_server(www) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield {"url": url, "www": www, "root": root, "browser": browser}
        finally:
            browser.close()


def open_app(site, url: str | None = None):
    context = site["browser"].new_context(viewport={"width": 412, "height": 915})
    page = context.new_page()
    page.goto(url or site["url"])
    return context, page


def hit_ids(page) -> list[str]:
    return page.eval_on_selector_all(".hit", "els => els.map(e => e.dataset.recipeId)")


def test_search_allergens_and_offline(site) -> None:
    context, page = open_app(site)
    try:
        page.wait_for_selector("#status:has-text('recipes in the index')")
        assert page.inner_text("#status").startswith("30 recipes in the index")
        (photo3,) = save_photos(site["root"] / "photos", range(3, 4))
        page.set_input_files("#photo", str(photo3))
        page.wait_for_selector(".hit")
        assert hit_ids(page)[0] == "rec0003" and len(hit_ids(page)) == 5
        assert "Top 5 of 30 recipes" in page.inner_text("#status")
        page.check("input[name=allergen][value=egg]")  # rec0003 has egg: the filter takes it out
        page.wait_for_selector("#status:has-text('without egg')")
        assert "rec0003" not in hit_ids(page)
        page.uncheck("input[name=allergen][value=egg]")

        # The service worker has cached the app, the runtime and the bundle: cut the network and reload.
        page.evaluate("async () => { await navigator.serviceWorker.ready; }")
        page.wait_for_function("() => navigator.serviceWorker.controller !== null")
        context.set_offline(True)
        page.reload()
        page.wait_for_selector("#status:has-text('recipes in the index')", timeout=30_000)
        (photo7,) = save_photos(site["root"] / "offline", range(7, 8))
        page.set_input_files("#photo", str(photo7))
        page.wait_for_selector(".hit")
        assert hit_ids(page)[0] == "rec0007"
        assert page.evaluate("() => navigator.onLine") is False
    finally:
        context.close()


def test_add_a_recipe_on_the_phone(site) -> None:
    context, page = open_app(site)
    try:
        page.wait_for_selector("#status:has-text('recipes in the index')")
        page.click("#add summary")
        page.fill("#add-title", "Grandma's tomato rice soup")
        page.fill("#add-ingredients", "2 cup tomato\n1 cup rice")
        page.fill("#add-steps", "cook the soup.")
        page.click("#add-button")
        page.wait_for_selector("#status:has-text('now holds 31 recipes')")
        assert "Grandma's tomato rice soup" in page.inner_text("#status")
    finally:
        context.close()


def test_a_tampered_bundle_is_refused_on_the_page(site) -> None:
    bad = site["www"] / "tampered"
    shutil.copytree(site["www"] / "bundle", bad)
    rows = json.loads((bad / "recipes.json").read_text())
    rows[0]["title"] = "Something else entirely"
    (bad / "recipes.json").write_text(json.dumps(rows))
    context, page = open_app(site, site["url"] + "?bundle=tampered/")
    try:
        page.wait_for_selector("#status.error")
        text = page.inner_text("#status")
        assert "recipes.json" in text and "refusing it" in text
        assert not hit_ids(page)
    finally:
        context.close()


def test_installable_and_same_allergens_as_the_server_app() -> None:
    manifest = json.loads((WEB / "manifest.webmanifest").read_text())
    assert manifest["display"] == "standalone" and manifest["start_url"] and manifest["icons"]
    assert 'capture="environment"' in (WEB / "index.html").read_text()
    tree = ast.parse((REPO / "examples" / "cooking_assistant" / "app.py").read_text())
    server = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.AnnAssign)
                  and getattr(n.target, "id", "") == "ALLERGENS")
    assert json.loads((WEB / "allergens.json").read_text()) == server


def test_the_app_is_static_files(site) -> None:
    # Nothing in the app talks to a server API: it runs from any static host (or the phone's cache).
    for name in ("app.js", "index.html", "sw.js"):
        assert "/api/" not in (WEB / name).read_text(), name
    assert Path(site["www"] / "lib" / "files.json").is_file()
