"""Cooking assistant: snap or drop a food photo, get recipes, filter allergens, add your own recipes.

A small web app around the torch-free SDK (`malm.sdk`: numpy + ONNX Runtime + hnswlib), the way an app
embeds malm:

    pip install 'malm[app]'
    python examples/cooking_assistant/app.py --bundle runs/demo/bundle      # then open http://127.0.0.1:8000
    python examples/cooking_assistant/app.py --bundle B --host 0.0.0.0 --allowed-host 192.168.1.20  # a LAN

One `Retriever` serves every request: FastAPI runs the plain `def` endpoints in its thread pool, the SDK
searches concurrently (ONNX Runtime sessions and the hnswlib index are read-safe) and `add_recipes` swaps
in the updated index atomically, so searches running meanwhile see the old or the new index, never half.

Every request is untrusted (`Limits`, all settable by flag): bodies are refused by their Content-Length
before they are read (and counted when they stream without one), a photo's size is read from its header
before anything is decoded and photos decode one at a time on a decoder thread (so memory is bounded however
many clients upload), recipes added are bounded in size and number, and only the allowed Host names are served.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as QueueTimeout  # not the builtin before Python 3.11
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO, Any

from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from PIL import Image, PngImagePlugin, UnidentifiedImageError
from pydantic import BaseModel, Field
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from malm.errors import ImageError, MalmError
from malm.preprocess import MAX_ASPECT, draft_jpeg, limit_aspect
from malm.sdk import Retriever
from malm.sdk.image_io import HEIC_HINT, SUPPORTED, heif_available, sniff

STATIC = Path(__file__).resolve().parent / "static"
MAX_K = 50
MB = 1024 * 1024
# A PNG's text chunks are inflated while its header is read, on the request's thread: Pillow allows 64 MB of
# them per picture (a 0.2 MB upload can carry that much). A food photo needs none: 1 MB in all.
PngImagePlugin.MAX_TEXT_CHUNK = 256 * 1024
PngImagePlugin.MAX_TEXT_MEMORY = MB

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


@dataclass(frozen=True)
class Limits:
    """What requests may cost. With the defaults, decoding holds at most one 64-megapixel photo (~256 MB) at a
    time however many clients upload (README.md lists the flags and what was measured)."""

    max_upload_mb: float = 25.0  # a search request's body (a 48-megapixel phone JPEG is ~15 MB)
    max_json_kb: float = 64.0  # any other request's body (an added recipe is a few KB)
    max_megapixels: float = 64.0  # one photo, as decoded (a large JPEG decodes at 1/2..1/8 scale first)
    decoders: int = 1  # threads that decode photos: the memory they take is ~ decoders x max_megapixels x 4 B
    wait_s: float = 120.0  # longest wait for a decoder or for the recipe writer, then 503
    max_added: int = 1000  # recipes this process adds to the bundle (its disk growth), then 507
    max_title: int = 200  # characters
    max_items: int = 50  # ingredients, and instructions, per recipe
    max_item_chars: int = 500  # one ingredient or instruction
    max_recipe_chars: int = 20_000  # a recipe's text in all
    allowed_hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "[::1]")  # Host header names served; "*" any

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "allowed_hosts" and not value > 0:
                raise ValueError(f"{f.name} must be > 0, got {value}")
        if not self.allowed_hosts:
            raise ValueError("allowed_hosts is empty: name at least one host (or '*')")


class BodyLimit:
    """ASGI middleware: a body over the limit is answered 413 before it is read.

    With a Content-Length the answer goes out at once (the body is never received; the server then closes
    the connection); a body streamed without one is counted as it arrives and cut off at the limit.
    """

    def __init__(self, app: ASGIApp, limit_for: Any) -> None:
        self.app = app
        self.limit_for = limit_for  # path -> bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = int(self.limit_for(scope["path"]))
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared < 0 or declared > limit:
                reason = "bad Content-Length" if declared < 0 else f"request body of {declared} bytes"
                await JSONResponse({"detail": f"{reason}: the limit is {limit} bytes"}, status_code=413,
                                   headers={"Connection": "close"})(scope, receive, send)
                return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, f"request body above the limit of {limit} bytes")
            return message

        await self.app(scope, counted, send)


# Pillow keeps 1 byte per pixel for these modes, 2 for 16-bit gray, 4 for every other mode (RGB included).
_BYTES_1 = {"1", "L", "P"}
# Modes Image.reduce cannot average, and what they are converted to first (a palette is not averageable).
_CONVERT = {"1": "L", "P": "RGBA", "PA": "RGBA", "I;16": "I", "I;16L": "I", "I;16B": "I", "I;16N": "I"}


def bytes_per_pixel(mode: str) -> int:
    return 1 if mode in _BYTES_1 else 2 if mode.startswith("I;16") else 4


def _kept(w: int, h: int) -> tuple[int, int]:
    """The size `limit_aspect` keeps (a very long picture is center-cropped to 4:1 first)."""
    short, long = min(w, h), max(w, h)
    keep = min(long, max(1, round(short * MAX_ASPECT)))
    return (keep, h) if w > h else (w, keep)


def decode_cost(mode: str, w: int, h: int, min_side: int) -> int:
    """Bytes `decode` holds at its peak: the decoded picture, its 4:1 crop, its converted copy."""
    cost = w * h * bytes_per_pixel(mode)
    kw, kh = _kept(w, h)
    if (kw, kh) != (w, h):
        cost += kw * kh * bytes_per_pixel(mode)
    if mode in _CONVERT and min_side > 0 and min(kw, kh) // (2 * min_side) >= 2:
        cost += kw * kh * bytes_per_pixel(_CONVERT[mode])
    return cost


def open_photo(file: IO[bytes], name: str, min_side: int, limits: Limits) -> Image.Image:
    """An upload's header (no pixels read yet), or 400/413: the size and mode decide what decoding costs, and
    a photo that would need more than `limits.max_megapixels` RGB pixels' worth of memory is refused here."""
    image = _open_header(file, name)
    draft_jpeg(image, min_side)  # a large JPEG then decodes at 1/2..1/8 scale: the size below is that one
    w, h = image.size
    cost, most = decode_cost(image.mode, w, h, min_side), limits.max_megapixels * 1e6 * 4
    if cost > most:
        raise HTTPException(413, f"{name}: {w}x{h} ({image.mode}) needs {cost / MB:.0f} MB to decode; this app "
                                 f"decodes photos up to {limits.max_megapixels:g} megapixels ({most / MB:.0f} MB)")
    return image


def decode(image: Image.Image, name: str, min_side: int) -> Image.Image:
    """Decode a header-checked photo and bring it near the size the model needs: a very long picture is
    cropped to 4:1 (as the SDK's preprocessing would), a much larger one is reduced with a box filter to >= 2x
    the side the SDK resizes to. Runs on the app's decoder threads only (see `create_app`)."""
    decoded = image
    try:
        image.load()
        image = limit_aspect(image)
        factor = min(image.size) // (2 * min_side) if min_side > 0 else 0
        if factor >= 2:
            target = _CONVERT.get(image.mode)
            image = (image.convert(target) if target else image).reduce(factor)
    except (OSError, ValueError, SyntaxError) as e:
        decoded.close()
        raise HTTPException(400, f"{name}: cannot be decoded ({e})") from None
    if image is not decoded:
        # Free the full-size pixels now: the request still holds the header object while it searches, and
        # the next photo's decoding would otherwise run with this one still in memory.
        decoded.close()
    return image


def _open_header(file: IO[bytes], name: str) -> Image.Image:
    head = file.read(32)
    file.seek(0)
    if sniff(head) == "heif" and not heif_available():
        raise HTTPException(400, f"{name}: {HEIC_HINT}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(file)  # reads the header only
    except Image.DecompressionBombError as e:
        raise HTTPException(413, f"{name}: refused, too many pixels ({e})") from None
    except UnidentifiedImageError:
        raise HTTPException(400, f"{name}: not a supported image format (supported: {SUPPORTED})") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise HTTPException(400, f"{name}: cannot be read ({e})") from None


class NewRecipe(BaseModel):
    title: str = Field(min_length=1)
    ingredients: list[str] = Field(min_length=1)
    instructions: list[str] = Field(default_factory=list)


def check_recipe(recipe: NewRecipe, limits: Limits) -> dict[str, Any]:
    """The record to add, or 422 naming the limit it breaks (before the bundle is touched)."""
    title = recipe.title.strip()
    ingredients = [i.strip() for i in recipe.ingredients if i.strip()]
    instructions = [s.strip() for s in recipe.instructions if s.strip()]
    problems = []
    if not title or len(title) > limits.max_title:
        problems.append(f"title must have 1 to {limits.max_title} characters")
    if not ingredients:
        problems.append("at least one ingredient")
    for what, items in (("ingredients", recipe.ingredients), ("instructions", recipe.instructions)):
        if len(items) > limits.max_items:
            problems.append(f"at most {limits.max_items} {what}")
        if any(len(i) > limits.max_item_chars for i in items):
            problems.append(f"each of the {what} at most {limits.max_item_chars} characters")
    if len(title) + sum(map(len, ingredients)) + sum(map(len, instructions)) > limits.max_recipe_chars:
        problems.append(f"at most {limits.max_recipe_chars} characters of text in all")
    if problems:
        raise HTTPException(422, "recipe refused: " + "; ".join(problems))
    return {"title": title, "ingredients": ingredients, "instructions": instructions}


def create_app(bundle: str | os.PathLike[str], threads: int | None = None, limits: Limits | None = None) -> FastAPI:
    limits = limits or Limits()
    retriever = Retriever.load(bundle, threads=threads)
    root = Path(bundle).resolve()
    # Photos decode on these threads only, whatever thread serves the request: glibc keeps a freed picture's
    # memory in the arena of the thread that allocated it, so N request threads decoding would each keep one.
    decoders = ThreadPoolExecutor(limits.decoders, thread_name_prefix="decode")
    writer = threading.Semaphore(1)  # one add at a time; the others wait (up to wait_s), never pile up
    added = [0]
    app = FastAPI(title="malm cooking assistant")

    def public(text: str) -> str:
        """No absolute path of this machine in an answer: the bundle is named by its folder name."""
        for path in (str(root), str(Path(bundle))):
            text = text.replace(path, root.name) if os.path.isabs(path) else text
        return text

    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        details = {k: v for k, v in retriever.info().items() if k not in ("cpu", "threads")}
        details["bundle"] = root.name  # given relative or absolute, the bundle is named by its folder only
        return {"recipes": len(retriever), "allergens": ALLERGENS, "can_add": _can_add(retriever),
                "torch_imported": "torch" in sys.modules, "bundle": _relative(details, root),
                "limits": {"max_upload_mb": limits.max_upload_mb, "max_megapixels": limits.max_megapixels,
                           "max_title": limits.max_title, "max_items": limits.max_items,
                           "max_item_chars": limits.max_item_chars}}

    @app.post("/api/search")
    def search(photo: UploadFile = File(...), k: int = Form(5), allergens: str = Form(""),
               exclude: str = Form("")) -> dict[str, Any]:
        if not 1 <= k <= MAX_K:
            raise HTTPException(422, f"k must be between 1 and {MAX_K}")
        terms = _exclusions(allergens, exclude)
        name = (photo.filename or "photo")[:100]
        min_side = retriever.bundle.preprocess.resize
        header = open_photo(photo.file, name, min_side, limits)
        job = decoders.submit(decode, header, name, min_side)
        try:
            image = job.result(timeout=limits.wait_s)
        except QueueTimeout:
            job.cancel()
            raise HTTPException(503, "busy decoding other photos; try again in a moment") from None
        try:
            hits = retriever.search(image, k=k, exclude_ingredients=terms)
        except ImageError as e:
            raise HTTPException(400, f"{name}: {public(str(e))}") from None
        except MalmError as e:
            raise HTTPException(400, public(str(e))) from None
        finally:
            image.close()
        return {"hits": [h.to_dict() | {"instructions": list(h.instructions)} for h in hits], "excluded": terms,
                "recipes": len(retriever)}

    @app.post("/api/recipes", status_code=201)
    def add_recipe(recipe: NewRecipe) -> dict[str, Any]:
        if not _can_add(retriever):
            raise HTTPException(409, "this bundle has no recipe encoder (export with the recipe encoder to add recipes)")
        record = check_recipe(recipe, limits) | {"id": f"user-{uuid.uuid4().hex[:10]}"}
        if not writer.acquire(timeout=limits.wait_s):
            raise HTTPException(503, "busy adding other recipes; try again in a moment")
        try:
            if added[0] >= limits.max_added:
                raise HTTPException(507, f"this app has added its limit of {limits.max_added} recipes")
            report = retriever.add_recipes([record])
            added[0] += report.indexed
        except MalmError as e:
            raise HTTPException(400, public(str(e))) from None
        finally:
            writer.release()
        return {"id": record["id"], "added": report.indexed, "recipes": len(retriever)}

    json_limit = int(limits.max_json_kb * 1024)
    upload_limit = int(limits.max_upload_mb * MB)
    # Outermost first: the Host check, then the body limit, before any route reads a byte.
    app.add_middleware(BodyLimit, limit_for=lambda path: upload_limit if path == "/api/search" else json_limit)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(limits.allowed_hosts))
    return app


def _relative(value: Any, root: Path) -> Any:
    """`value` with every absolute path made relative to the bundle (or reduced to its file name)."""
    if isinstance(value, dict):
        return {k: _relative(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative(v, root) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        path = Path(value).resolve()
        return root.name if path == root else path.relative_to(root).as_posix() if path.is_relative_to(root) \
            else path.name
    return value


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
            raise HTTPException(422, f"unknown allergen {name[:50]!r}; known: {', '.join(ALLERGENS)}")
        terms += ALLERGENS[name]
    terms += [t.strip() for t in exclude.split(",") if t.strip()][:50]
    return list(dict.fromkeys(terms))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = Limits()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default=os.environ.get("MALM_BUNDLE"), help="bundle directory (or $MALM_BUNDLE)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--threads", type=int, default=None, help="encoder threads per search")
    p.add_argument("--allowed-host", action="append", dest="allowed_hosts", metavar="NAME",
                   help="a Host name the app also answers to, besides 127.0.0.1, localhost and [::1] (repeatable; "
                        "'*' for any); also $MALM_APP_ALLOWED_HOSTS (comma-separated)")
    p.add_argument("--max-upload-mb", type=float, default=d.max_upload_mb, help="search request body limit")
    p.add_argument("--max-json-kb", type=float, default=d.max_json_kb, help="other request bodies' limit")
    p.add_argument("--max-megapixels", type=float, default=d.max_megapixels, help="one photo, as decoded")
    p.add_argument("--decoders", type=int, default=d.decoders,
                   help="photo decoding threads (memory: ~ decoders x max-megapixels x 4 bytes)")
    p.add_argument("--wait-s", type=float, default=d.wait_s, help="longest wait for a decoder or the writer, then 503")
    p.add_argument("--max-added", type=int, default=d.max_added, help="recipes this process may add")
    p.add_argument("--max-requests", type=int, default=64,
                   help="requests handled at once; more are answered 503 (uvicorn's limit_concurrency)")
    return p.parse_args(argv)


def limits_from(args: argparse.Namespace) -> Limits:
    hosts = [*Limits.allowed_hosts, *(args.allowed_hosts or ())]  # added to the local names, not instead
    hosts += [h.strip() for h in os.environ.get("MALM_APP_ALLOWED_HOSTS", "").split(",") if h.strip()]
    return Limits(max_upload_mb=args.max_upload_mb, max_json_kb=args.max_json_kb,
                  max_megapixels=args.max_megapixels, decoders=args.decoders, wait_s=args.wait_s,
                  max_added=args.max_added, allowed_hosts=tuple(dict.fromkeys(hosts)))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.bundle:
        sys.exit("error: --bundle is required (or set MALM_BUNDLE)")
    import uvicorn

    try:
        app = create_app(args.bundle, threads=args.threads, limits=limits_from(args))
    except ValueError as e:
        sys.exit(f"error: {e}")
    except MalmError as e:
        sys.exit(f"error: {e}")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", limit_concurrency=args.max_requests)


if __name__ == "__main__":
    main()
