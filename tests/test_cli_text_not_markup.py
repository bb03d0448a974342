"""The command line prints data as text, never as rich markup (recipe titles, photo paths, manifest strings,
error messages that quote them).

A recipe titled `[/]` (any user of the cooking-assistant app can add one) used to crash `malm query` with
"failed unexpectedly: MarkupError"; `[link=…]` printed a hidden terminal hyperlink; a photo path or a
manifest model name with `[/]` crashed `query` / `bundle info`. Commands run as a user runs them (a
subprocess), with FORCE_COLOR=1 so rich writes styles and hyperlinks as it would on a terminal.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _sdk_bundle import fake_recipe_encoder, make_bundle, recipe, save_photos

from malm.bundle import BundleWriter
from malm.edge_index.builder import build_index
from malm.edge_index.records import RecipeRecord

REPO = Path(__file__).resolve().parent.parent
HYPERLINK = "\x1b]8;"  # OSC 8: how a terminal hyperlink starts
# One hostile title per photo 0..4: photo i finds recipe i first.
TITLES = ["[/]", "[link=https://evil.example]click me[/link]", "[bold red]shouting", ":smile: [red]r[/red] :x:",
          "\x1b]8;;https://evil.example\x1b\\raw escape\x1b]8;;\x1b\\"]
MODEL = "[/]model [link=https://evil.example]x[/link] \x1b[31m"


def hostile(i: int) -> RecipeRecord:
    r = recipe(i)
    if i >= len(TITLES):
        return r
    return RecipeRecord(id=r.id, title=TITLES[i], ingredients=(f"1 cup [/]{TITLES[i]}", *r.ingredients),
                        instructions=r.instructions, url=r.url)


def shown(title: str) -> str:
    """How a title must appear: itself, with control characters written as \\xNN."""
    return re.sub(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", lambda m: f"\\x{ord(m.group()):02x}", title)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("markup")
    bundle = make_bundle(root / "bundle", 12)
    build_index(bundle, [hostile(i) for i in range(12)], fake_recipe_encoder(), M=16, ef_construction=100,
                ef_search=64)
    with BundleWriter(bundle) as bw:  # what a bundle's maker controls: the model's name
        bw.manifest["model"] = {"name": MODEL}
    photos = save_photos(root / "photos [/] [link=https://evil.example]x[/link]", range(len(TITLES)))
    return bundle, photos


def malm(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FORCE_COLOR": "1", "COLUMNS": "400", "MALM_CACHE_DIR": str(cache),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("NO_COLOR", None)
    env.pop("MALM_BUNDLE", None)
    return subprocess.run([sys.executable, "-m", "malm.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def plain(out: str) -> str:
    """The text with SGR colour codes removed (rich writes them with FORCE_COLOR); hyperlinks stay."""
    return re.sub(r"\x1b\[[0-9;]*m", "", out)


def squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def assert_text(p: subprocess.CompletedProcess[str]) -> None:
    assert "unexpectedly" not in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert HYPERLINK not in p.stdout + p.stderr


def test_query_prints_hostile_titles_and_photo_paths_as_text(setup: tuple[Path, list[Path]],
                                                            tmp_path: Path) -> None:
    bundle, photos = setup
    p = malm("query", *map(str, photos), "--bundle", str(bundle), "-k", "1", cache=tmp_path)
    assert p.returncode == 0, p.stderr
    assert_text(p)
    out = plain(p.stdout)
    for title, path in zip(TITLES, photos, strict=True):
        assert shown(title) in out, (title, out)
        assert squash(str(path)) in squash(out)  # the table's title (wrapped to the table's width)
    assert "\x1b]8" not in p.stdout and "😄" not in out and "❌" not in out


def test_query_a_missing_photo_with_markup_in_its_name(setup: tuple[Path, list[Path]], tmp_path: Path) -> None:
    bundle, photos = setup
    missing = photos[0].parent / "gone [/] \x1b]8;;https://evil.example\x1b\\.jpg"
    p = malm("query", str(photos[0]), str(missing), "--bundle", str(bundle), cache=tmp_path)
    assert p.returncode == 1, p.stderr  # one photo answered, one not
    assert_text(p)
    assert shown(str(missing)) in plain(p.stderr)
    assert shown(TITLES[0]) in plain(p.stdout)


@pytest.mark.parametrize("verify", [False, True])
def test_bundle_info_prints_manifest_strings_as_text(setup: tuple[Path, list[Path]], tmp_path: Path,
                                                     verify: bool) -> None:
    bundle, _ = setup
    p = malm("bundle", "info", str(bundle), *(["--verify"] if verify else []), cache=tmp_path)
    assert p.returncode == 0, p.stderr
    assert_text(p)
    assert f"model {shown(MODEL)}," in plain(p.stdout)


def test_doctor_prints_paths_and_manifest_strings_as_text(setup: tuple[Path, list[Path]], tmp_path: Path) -> None:
    bundle, _ = setup
    # A bundle path with markup in it: the doctor's table shows it, and its problems line for a missing one.
    odd = tmp_path / "b [/] [red]x"
    odd.parent.mkdir(parents=True)  # "b [" / "] [red]x": the slash of [/] makes a folder
    odd.symlink_to(bundle, target_is_directory=True)
    p = malm("doctor", "--bundle", str(odd), cache=tmp_path)
    assert_text(p)
    assert f"{odd}:" in plain(p.stdout), p.stdout
    p = malm("doctor", "--bundle", str(tmp_path / "missing [/]"), cache=tmp_path)
    assert p.returncode == 1
    assert_text(p)
    assert "missing [/]" in plain(p.stdout)


def test_error_lines_quote_data_as_text(tmp_path: Path) -> None:
    """A MalmError quoting a path goes through click's echo: no markup, and no control character either."""
    bad = tmp_path / "no bundle [/] \x1b]8;;https://evil.example\x1b\\"
    p = malm("query", "x.jpg", "--bundle", str(bad), cache=tmp_path)
    assert p.returncode == 2
    assert_text(p)
    assert p.stderr.startswith("error: ") and "\x1b" not in p.stderr and "no bundle [/] \\x1b]8;;" in p.stderr


def test_eval_and_synth_print_paths_as_text(tmp_path: Path) -> None:
    import numpy as np

    npz = tmp_path / "emb [/] [link=https://evil.example]x[/link].npz"
    npz.parent.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.savez(npz, image=rng.normal(size=(20, 8)).astype(np.float32), recipe=rng.normal(size=(20, 8)).astype(np.float32))
    p = malm("eval", "--embeddings", str(npz), cache=tmp_path)
    assert p.returncode == 0, p.stderr
    assert_text(p)
    out = tmp_path / "synth [/] [bold]"
    out.parent.mkdir(parents=True)
    p = malm("data", "synth", str(out), "--recipes", "12", "--image-size", "32", "--workers", "1", cache=tmp_path)
    assert p.returncode == 0, p.stderr
    assert_text(p)
    assert str(out) in plain(p.stderr)


def test_console_helper_renders_every_string_literally() -> None:
    from rich.table import Table

    from malm.console import console, line, printable, styled

    # Styles written as on a terminal: a link would be an OSC 8 sequence.
    out = console(file=io.StringIO(), force_terminal=True, width=400)
    table = Table(title=TITLES[1])
    table.add_column(TITLES[0])
    table.add_row(TITLES[2], line(styled("ok", "green"), " ", TITLES[4]))
    out.print(table)
    out.print(TITLES[3], styled(TITLES[1], "red"))
    text = plain(out.file.getvalue())
    assert HYPERLINK not in text and "😄" not in text
    for title in TITLES:
        assert shown(title) in text
    assert printable("a\x1bb\x9bc\td\ne") == "a\\x1bb\\x9bc\td\ne"
    # The detector works: rich's default console turns the same title into a terminal hyperlink.
    from rich.console import Console

    default = Console(file=io.StringIO(), force_terminal=True, width=400)
    default.print(TITLES[1])
    assert HYPERLINK in default.file.getvalue() and "[link=" not in default.file.getvalue()


def test_no_command_prints_through_a_markup_console() -> None:
    """Every rich Console in malm is the data console (progress bars escape their labels themselves), and no
    string passed to a print carries markup tags: colour comes from `styled`."""
    consoles, tags = [], []
    for path in sorted((REPO / "malm").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        source = path.read_text(encoding="utf-8")
        if rel not in ("malm/console.py", "malm/progress.py") and re.search(r"\bConsole\(", source):
            consoles.append(rel)
        if rel != "malm/console.py" and re.search(r"\[/?(red|green|yellow|blue|bold|dim|italic|link)\b[^\]]*\]",
                                                  source):
            tags.append(rel)
    assert consoles == [], f"use malm.console.console() instead of rich.console.Console in {consoles}"
    assert tags == [], f"markup tags in {tags}: print data as text and colour with malm.console.styled"
