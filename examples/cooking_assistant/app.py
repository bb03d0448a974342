"""Cooking assistant: snap or drop a food photo, get recipes, filter allergens, add your own recipes.

A small web app around the torch-free SDK (`malm.sdk`: numpy + ONNX Runtime + hnswlib), the way an app
embeds malm:

    pip install 'malm[app]'
    python examples/cooking_assistant/app.py --bundle runs/demo/bundle      # then open http://127.0.0.1:8000

One `Retriever` serves every request: FastAPI runs the plain `def` endpoints in its thread pool, the SDK
searches concurrently (ONNX Runtime sessions and the hnswlib index are read-safe) and `add_recipes` swaps
in the updated index atomically, so searches running meanwhile see the old or the new index, never half.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from malm.errors import ImageError, MalmError
from malm.sdk import Retriever

STATIC = Path(__file__).resolve().parent / "static"
MAX_UPLOAD = 25 * 1024 * 1024  # a 48-megapixel phone JPEG is ~15 MB
MAX_K = 50

# Allergen → ingredient names the filter leaves out. The SDK matches whole ingredient-name words in the
# recipe text ("peanut" matches "peanut butter"); it cannot see what is in the photographed dish.
ALLERGENS: dict[str, list[str]] = {
    "peanuts": ["peanut"],
    "tree nuts": ["almond", "walnut", "cashew", "pecan", "hazelnut", "pistachio", "macadamia"],
    "milk": ["milk", "cheese", "butter", "cream", "yogurt"],
    "egg": ["egg"],
    "gluten": ["flour", "wheat", "bread", "pasta", "barley"],
    "soy": ["soy", "tofu"],
    "fish": ["fish", "salmon", "tuna", "cod", "anchovy"],
    "shellfish": ["shrimp", "prawn", "crab", "lobster"],
    "sesame": ["sesame", "tahini"],
}


class NewRecipe(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    ingredients: list[str] = Field(min_length=1, max_length=100)
    instructions: list[str] = Field(default_factory=list, max_length=100)


def create_app(bundle: str | os.PathLike[str], threads: int | None = None) -> FastAPI:
    retriever = Retriever.load(bundle, threads=threads)
    app = FastAPI(title="malm cooking assistant")

    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {"recipes": len(retriever), "allergens": ALLERGENS, "can_add": _can_add(retriever),
                "torch_imported": "torch" in sys.modules, "bundle": retriever.info()}

    @app.post("/api/search")
    def search(photo: UploadFile = File(...), k: int = Form(5), allergens: str = Form(""),
               exclude: str = Form("")) -> dict[str, Any]:
        if not 1 <= k <= MAX_K:
            raise HTTPException(422, f"k must be between 1 and {MAX_K}")
        data = photo.file.read(MAX_UPLOAD + 1)
        if len(data) > MAX_UPLOAD:
            raise HTTPException(413, f"photo larger than {MAX_UPLOAD // (1024 * 1024)} MB")
        terms = _exclusions(allergens, exclude)
        try:
            hits = retriever.search(data, k=k, exclude_ingredients=terms)
        except ImageError as e:
            raise HTTPException(400, f"{photo.filename or 'photo'}: {e}") from None
        except MalmError as e:
            raise HTTPException(400, str(e)) from None
        return {"hits": [h.to_dict() | {"instructions": list(h.instructions)} for h in hits], "excluded": terms,
                "recipes": len(retriever)}

    @app.post("/api/recipes", status_code=201)
    def add_recipe(recipe: NewRecipe) -> dict[str, Any]:
        if not _can_add(retriever):
            raise HTTPException(409, "this bundle has no recipe encoder (export with the recipe encoder to add recipes)")
        rid = f"user-{uuid.uuid4().hex[:10]}"
        record = {"id": rid, "title": recipe.title.strip(),
                  "ingredients": [i.strip() for i in recipe.ingredients if i.strip()],
                  "instructions": [s.strip() for s in recipe.instructions if s.strip()]}
        try:
            report = retriever.add_recipes([record])
        except MalmError as e:
            raise HTTPException(400, str(e)) from None
        return {"id": rid, "added": report.indexed, "recipes": len(retriever)}

    return app


def _can_add(retriever: Retriever) -> bool:
    encoders = retriever.bundle.manifest.get("encoders") or {}
    return any(isinstance(e, dict) and e.get("role") == "recipe" for e in encoders.values())


def _exclusions(allergens: str, exclude: str) -> list[str]:
    """Allergen names (comma-separated) → their ingredient words, plus free-text exclusions."""
    terms: list[str] = []
    for name in (a.strip() for a in allergens.split(",")):
        if not name:
            continue
        if name not in ALLERGENS:
            raise HTTPException(422, f"unknown allergen {name!r}; known: {', '.join(ALLERGENS)}")
        terms += ALLERGENS[name]
    terms += [t.strip() for t in exclude.split(",") if t.strip()]
    return list(dict.fromkeys(terms))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default=os.environ.get("MALM_BUNDLE"), help="bundle directory (or $MALM_BUNDLE)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--threads", type=int, default=None, help="encoder threads per search")
    args = p.parse_args(argv)
    if not args.bundle:
        p.error("--bundle is required (or set MALM_BUNDLE)")
    import uvicorn

    try:
        app = create_app(args.bundle, threads=args.threads)
    except MalmError as e:
        sys.exit(f"error: {e}")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
