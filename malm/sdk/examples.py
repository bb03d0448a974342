"""The retrieval-examples grid of a bundle's model card (`examples.png`), drawn through the SDK.

`malm index build --data` and `malm bundle card --data` call it; the card (`malm.model_card`) shows the grid
when the file is there.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageDraw

from malm._atomic import atomic_path
from malm.errors import MalmError
from malm.model_card import EXAMPLES
from malm.recipe1m import load_recipe1m
from malm.sdk.retriever import Retriever


def write_examples(bundle: str | os.PathLike[str], data_dir: str | os.PathLike[str], n: int = 4, k: int = 3,
                   split: str = "test") -> Path | None:
    """Draw `examples.png`: `n` held-out photos of `data_dir`, each with the bundle's top `k` recipes.

    Returns None (and draws nothing) when the data has no photos of that split or the bundle cannot search
    yet (no image encoder or no index): the card simply has no examples section then.
    """
    bundle = Path(bundle)
    recipes = load_recipe1m(Path(data_dir)).recipes
    photos = {r.id: r.image_paths[0] for r in recipes if r.image_paths}
    queries = [r for r in recipes if r.partition == split and r.image_paths][:n]
    if not queries:
        return None
    try:
        retriever = Retriever.load(bundle)
    except MalmError:
        return None
    tile, pad, text_h = 128, 6, 34
    grid = Image.new("RGB", ((k + 1) * (tile + pad) + pad, len(queries) * (tile + text_h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for row, recipe in enumerate(queries):
        y = pad + row * (tile + text_h + pad)
        hits = retriever.search(recipe.image_paths[0], k=k)
        # (photo or None, caption, whether it is the true recipe; None for the query itself)
        cells: list[tuple[Path | None, str, bool | None]] = [(recipe.image_paths[0], "photo: " + recipe.title, None)]
        cells += [(photos.get(h.recipe_id), f"{h.rank}. {h.title}", h.recipe_id == recipe.id) for h in hits]
        for col, (path, caption, correct) in enumerate(cells):
            x = pad + col * (tile + pad)
            if path is not None:
                with Image.open(path) as im:
                    grid.paste(im.convert("RGB").resize((tile, tile)), (x, y))
            else:
                draw.rectangle([x, y, x + tile, y + tile], outline="gray")
                draw.text((x + 6, y + tile // 2 - 6), "(no photo)", fill="gray")
            if correct:
                draw.rectangle([x - 3, y - 3, x + tile + 2, y + tile + 2], outline=(0, 170, 0), width=3)
            words, lines_, line = caption.split(), [], ""
            for w in words:  # wrap to the tile width, two lines at most
                if draw.textlength(line + " " + w) > tile and line:
                    lines_.append(line)
                    line = w
                else:
                    line = (line + " " + w).strip()
            lines_.append(line)
            draw.multiline_text((x, y + tile + 2), "\n".join(lines_[:2]), fill="black", spacing=1)
    out = bundle / EXAMPLES
    with atomic_path(out) as tmp:
        grid.save(tmp, format="PNG")
    os.chmod(out, 0o644)
    return out
