"""examples/cooking_assistant end to end in a real headless browser (Debian's chromium, driven by Playwright):
open the page, upload a photo, see the true recipe; drop a photo; filter an allergen; add a recipe.

Needs `apt-get install chromium` and `pip install 'malm[e2e]'`. Missing either is a FAILURE with the
install hint, unless MALM_SKIP_BROWSER_TESTS=1 says the browser tests are not wanted on this machine.
MALM_CHROMIUM overrides the browser path; MALM_SCREENSHOT_DIR keeps the page's screenshot.
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pytest
from _app_server import app_server, require
from _sdk_bundle import make_bundle, save_photos

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_path() -> str:
    path = os.environ.get("MALM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        if os.environ.get("MALM_SKIP_BROWSER_TESTS", "") not in ("", "0"):
            pytest.skip("browser tests: MALM_SKIP_BROWSER_TESTS is set (no chromium here)")
        pytest.fail(f"browser tests need chromium at {path}: apt-get install -y chromium (or set MALM_CHROMIUM, "
                    "or MALM_SKIP_BROWSER_TESTS=1 to skip them on purpose)", pytrace=False)
    return path


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory):
    require(("fastapi", "uvicorn", "multipart", "playwright"), "MALM_SKIP_BROWSER_TESTS", "browser tests")
    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    root = tmp_path_factory.mktemp("browser")
    bundle = make_bundle(root / "bundle", 30, with_recipe_encoder=True)
    with app_server(bundle, root / "server.log") as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            # A phone-sized viewport: the layout the app is for.
            pg = browser.new_page(viewport={"width": 412, "height": 915}, device_scale_factor=1)
            pg.goto(url)
            pg.wait_for_selector("#status:has-text('recipes in the index')")
            yield pg, root
        finally:
            browser.close()


def hit_ids(pg) -> list[str]:
    return pg.eval_on_selector_all(".hit", "els => els.map(e => e.dataset.recipeId)")


def test_upload_a_photo_and_see_the_true_recipe(page) -> None:
    pg, root = page
    (photo3,) = save_photos(root / "photos", range(3, 4))
    pg.set_input_files("#photo", str(photo3))
    pg.wait_for_selector(".hit")
    assert hit_ids(pg)[0] == "rec0003"
    assert pg.inner_text(".hit h3").startswith("1. Dish number 3")
    assert "Top 5 of 30 recipes" in pg.inner_text("#status")
    shots = os.environ.get("MALM_SCREENSHOT_DIR")
    pg.screenshot(path=str(Path(shots or root) / "cooking_assistant.png"), full_page=True)


def test_drop_a_photo(page) -> None:
    pg, root = page
    (photo5,) = save_photos(root / "drop", range(5, 6))
    data = base64.b64encode(photo5.read_bytes()).decode()
    pg.evaluate("""async (b64) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], "dinner.jpg", {type: "image/jpeg"}));
        document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true}));
    }""", data)
    pg.wait_for_function("() => document.querySelector('.hit')?.dataset.recipeId === 'rec0005'")
    assert hit_ids(pg)[0] == "rec0005"


def test_allergen_filter(page) -> None:
    pg, root = page
    (photo3,) = save_photos(root / "allergen", range(3, 4))
    pg.set_input_files("#photo", str(photo3))
    pg.wait_for_function("() => document.querySelector('.hit')?.dataset.recipeId === 'rec0003'")
    pg.check("input[name=allergen][value=egg]")  # rec0003 has egg: the filter takes it out
    pg.wait_for_selector("#status:has-text('without egg')")
    assert "rec0003" not in hit_ids(pg)
    assert "egg" not in " ".join(pg.eval_on_selector_all(".hit li", "els => els.map(e => e.textContent)")).lower()
    pg.uncheck("input[name=allergen][value=egg]")


def test_add_a_recipe(page) -> None:
    pg, _ = page
    pg.click("#add summary")
    pg.fill("#add-title", "Grandma's tomato rice soup")
    pg.fill("#add-ingredients", "2 cup tomato\n1 cup rice")
    pg.fill("#add-steps", "cook the soup.")
    pg.click("#add-button")
    pg.wait_for_selector("#status:has-text('now holds 31 recipes')")
    assert "Grandma's tomato rice soup" in pg.inner_text("#status")
