"""The cooking-assistant app under abuse, on 127.0.0.1: memory while many clients upload huge photos, bodies
refused before they are read, and recipe adds beyond the limits refused without touching the bundle.

    PYTHONPATH=. .venv/bin/python benchmarks/app_load.py --bundle runs/demo/bundle [--clients 16 --megapixels 60]

The app runs in its own process with its default limits (plus `--app-arg` flags); the bundle is copied
first (the adds write to it). Measured:
- peak RSS of the app (the kernel's VmHWM, and VmRSS sampled every 20 ms) while `--clients` threads upload
  one `--megapixels` PNG of a flat colour each (small on disk: the pixels are the cost), all at once;
- a request that declares a 300 MB body and sends 10 bytes: time to its 413 (the body is never awaited);
  a chunked body without a Content-Length: how many bytes were sent before the 413;
- refused recipe adds (too long, too many items, too large a body, a wrong Host): every bundle file's
  sha256 before and after;
- PNGs whose header carries 200 MB of compressed text each, uploaded by all clients at once: RSS growth.
Writes benchmarks/results/app_load.{json,md} with the machine's CPU features.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import io
import json
import math
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.machine import machine_info, summary_line  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def flat_png(megapixels: float, colour: tuple[int, int, int] = (200, 120, 40)) -> bytes:
    """A square PNG of one colour with `megapixels` pixels: ~0.2 MB on disk for 60 MP, ~240 MB decoded."""
    from PIL import Image

    side = math.ceil(math.sqrt(megapixels * 1e6))
    buf = io.BytesIO()
    Image.new("RGB", (side, side), colour).save(buf, format="PNG")
    return buf.getvalue()


def png_text_bomb(chunks: int = 200) -> bytes:
    """A 64x64 PNG carrying `chunks` zTXt chunks of 1 MB of text each, ~1 KB each compressed: reading its
    header inflates them (Pillow stops at 64 MB by default)."""
    import struct
    import zlib

    from PIL import Image

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, format="PNG")
    png = buf.getvalue()
    text = zlib.compress(b"A" * (1024 * 1024 - 64), 9)
    extra = b"".join(chunk(b"zTXt", f"k{i}".encode() + b"\0\0" + text) for i in range(chunks))
    return png[:33] + extra + png[33:]  # after IHDR (8 + 25 bytes), before IDAT


def small_jpeg(seed: int = 0) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.kron(grid, np.ones((64, 64, 1), np.uint8)), "RGB").save(buf, format="JPEG", quality=92)
    return buf.getvalue()


class RssSampler:
    """VmRSS of a process every `every` s in a thread; `peak_mb` also reads the kernel's high-water mark."""

    def __init__(self, pid: int, every: float = 0.02) -> None:
        self.pid, self.every, self.samples = pid, every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def field_mb(self, name: str) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) / 1024
        raise KeyError(name)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self.field_mb("VmRSS"))
            except (OSError, KeyError):
                return
            time.sleep(self.every)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def multipart(photo: bytes, filename: str = "photo.png", **fields: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="photo"; filename="{filename}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n".encode() + photo + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def request(url: str, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
            timeout: float = 300) -> tuple[int, Any, float]:
    """(status, JSON body or text, seconds) over a fresh connection."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    t0 = time.perf_counter()
    try:
        try:
            conn.request(method, path, body=body, headers=headers or {})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered (413) and closed before the whole body was sent: read that answer
        resp = conn.getresponse()
        raw = resp.read()
        seconds = time.perf_counter() - t0
    finally:
        conn.close()
    try:
        return resp.status, json.loads(raw), seconds
    except ValueError:
        return resp.status, raw.decode("utf-8", "replace"), seconds


def upload(url: str, photo: bytes, filename: str = "photo.png", k: int = 3) -> tuple[int, Any, float]:
    body, ctype = multipart(photo, filename, k=str(k))
    return request(url, "POST", "/api/search", body, {"Content-Type": ctype})


def concurrent_uploads(url: str, photo: bytes, clients: int) -> list[tuple[int, Any, float]]:
    """`clients` uploads of `photo`, all started together (a barrier), each on its own connection."""
    barrier = threading.Barrier(clients)

    def one(i: int) -> tuple[int, Any, float]:
        barrier.wait()
        return upload(url, photo, f"big{i}.png")

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(clients)))


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def _status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else 0


def declared_but_not_sent(url: str, declared: int = 300 * 1024 * 1024, sent: int = 10) -> dict[str, Any]:
    """Headers announcing a `declared`-byte body, then only `sent` bytes: the 413 must come without the rest."""
    host = url.removeprefix("http://")
    with _connect(url) as s:
        t0 = time.perf_counter()
        s.sendall(f"POST /api/search HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                  f"Content-Length: {declared}\r\n\r\n".encode() + b"-" * sent)
        reply = s.recv(65536)
        seconds = time.perf_counter() - t0  # the status line has arrived
        while chunk := s.recv(65536):  # the rest of the answer, until the server closes
            reply += chunk
    return {"declared_bytes": declared, "sent_bytes": sent, "status": _status(reply),
            "seconds_to_answer": round(seconds, 4), "answer": reply.split(b"\r\n\r\n", 1)[-1][:200].decode()}


def streamed_without_length(url: str, limit: int, chunk: int = 64 * 1024) -> dict[str, Any]:
    """A chunked upload without Content-Length that never ends: bytes sent before the 413 arrives."""
    import select

    host = url.removeprefix("http://")
    sent = 0
    reply = b""
    with _connect(url) as s:
        t0 = time.perf_counter()
        s.sendall(f"POST /api/search HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                  "Transfer-Encoding: chunked\r\n\r\n".encode())
        head = b'--x\r\nContent-Disposition: form-data; name="photo"; filename="endless.png"\r\n\r\n'
        s.sendall(f"{len(head):x}\r\n".encode() + head + b"\r\n")  # a well-formed start: the parser reads on
        payload = f"{chunk:x}\r\n".encode() + b"-" * chunk + b"\r\n"
        while sent < 20 * limit:
            if select.select([s], [], [], 0)[0]:
                break
            try:
                s.sendall(payload)
            except OSError:  # the server answered and closed
                break
            sent += chunk
        s.settimeout(30)
        try:
            reply = s.recv(65536)
        except OSError:
            reply = b""
        seconds = time.perf_counter() - t0
    return {"limit_bytes": limit, "sent_bytes_before_answer": sent, "status": _status(reply),
            "seconds": round(seconds, 3)}


def bundle_digest(bundle: Path) -> dict[str, str]:
    """sha256 of every file in the bundle (the store, the index, the manifest…), by relative path."""
    return {p.relative_to(bundle).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(bundle.rglob("*")) if p.is_file() and p.name != ".lock"}


def refused_adds(url: str, bundle: Path) -> dict[str, Any]:
    """Recipe adds beyond each limit, and the bundle byte for byte before and after them."""
    host = url.removeprefix("http://")
    long = "x" * 100_000
    cases: dict[str, tuple[Any, dict[str, str]]] = {
        "title of 100,000 characters": ({"title": long, "ingredients": ["salt"]}, {}),
        "an ingredient of 100,000 characters": ({"title": "t", "ingredients": [long]}, {}),
        "title of 201 characters": ({"title": "t" * 201, "ingredients": ["salt"]}, {}),
        "an ingredient of 501 characters": ({"title": "t", "ingredients": ["s" * 501]}, {}),
        "100 ingredients": ({"title": "t", "ingredients": [f"item {i}" for i in range(100)]}, {}),
        "100 instructions": ({"title": "t", "ingredients": ["salt"], "instructions": ["stir"] * 100}, {}),
        "45 instructions of 499 characters (22,455 in all)": ({"title": "t", "ingredients": ["salt"],
                                                               "instructions": ["y" * 499] * 45}, {}),
        "a 1 MB body": ({"title": "t", "ingredients": ["salt"], "pad": "z" * 1_000_000}, {}),
        "a Host that is not allowed": ({"title": "t", "ingredients": ["salt"]}, {"Host": "evil.example"}),
        "no ingredients": ({"title": "t", "ingredients": []}, {}),
    }
    before = bundle_digest(bundle)
    answers = {}
    for name, (body, headers) in cases.items():
        status, detail, seconds = request(url, "POST", "/api/recipes", json.dumps(body).encode(),
                                          {"Content-Type": "application/json", "Host": host, **headers})
        answers[name] = {"status": status, "seconds": round(seconds, 4), "detail": str(detail)[:160]}
    after = bundle_digest(bundle)
    return {"cases": answers, "files": len(before), "bundle_unchanged": before == after,
            "changed": sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))}


def run(bundle: Path, clients: int, megapixels: float, app_args: list[str], work: Path,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from _app_server import app_process

    copy = work / "bundle"
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns(".lock"))
    photo = flat_png(megapixels)
    log(f"{megapixels} MP flat PNG: {len(photo) / 1e6:.2f} MB")
    with app_process(copy, work / "app.log", tuple(app_args)) as (url, proc):
        rss = RssSampler(proc.pid)
        warm = upload(url, small_jpeg(), "warm.jpg")  # first search: ONNX Runtime's arenas, the store's cache
        base = rss.field_mb("VmRSS")
        t0 = time.perf_counter()
        with rss:
            answers = concurrent_uploads(url, photo, clients)
        wall = time.perf_counter() - t0
        peak_hwm = rss.field_mb("VmHWM")
        statuses: dict[str, int] = {}
        for status, _, _ in answers:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
        seconds = sorted(s for _, _, s in answers)
        after = upload(url, small_jpeg(), "after.jpg")
        declared = declared_but_not_sent(url)
        info = request(url, "GET", "/api/info")[1]
        limit = int(float(info["limits"]["max_upload_mb"]) * 1024 * 1024)
        streamed = streamed_without_length(url, limit)
        adds = refused_adds(url, copy)
        bomb = png_text_bomb()
        before_bombs = rss.field_mb("VmRSS")
        bomb_rss = RssSampler(proc.pid)
        with bomb_rss:
            bombs = concurrent_uploads(url, bomb, clients)
        still = upload(url, small_jpeg(), "still.jpg")
    log(f"peak RSS {peak_hwm:.0f} MB (baseline {base:.0f} MB), {statuses} in {wall:.1f} s")
    return {
        "clients": clients, "megapixels": megapixels, "png_bytes": len(photo), "app_args": app_args,
        "warm_status": warm[0],
        "rss_mb": {"baseline_after_warmup": round(base, 1), "peak_vmhwm": round(peak_hwm, 1),
                   "peak_sampled": round(max(rss.samples, default=base), 1), "samples": len(rss.samples)},
        "uploads": {"statuses": statuses, "wall_s": round(wall, 2),
                    "latency_s": {"min": round(seconds[0], 2), "median": round(seconds[len(seconds) // 2], 2),
                                  "max": round(seconds[-1], 2)},
                    "first_answer": answers[0][1] if answers[0][0] != 200 else
                    {"hits": len(answers[0][1]["hits"])}},
        "after_load_small_photo_status": after[0],
        "declared_300mb_sent_10b": declared, "chunked_without_length": streamed, "refused_adds": adds,
        "png_text_bombs": {"clients": clients, "png_bytes": len(bomb), "text_mb_each": 200,
                           "statuses": sorted({a[0] for a in bombs}),
                           "rss_growth_mb": round(max(bomb_rss.samples, default=before_bombs) - before_bombs, 1)},
        "small_photo_after_abuse_status": still[0],
    }


def markdown(result: dict[str, Any], machine: dict[str, Any], ceiling_mb: float) -> str:
    r = result
    u, rss = r["uploads"], r["rss_mb"]
    lines = [
        "# Cooking-assistant app under abuse (benchmarks/app_load.py)", "",
        f"Machine: {summary_line(machine)}; load average at start {machine.get('load_average')}.", "",
        f"- **Peak RSS {rss['peak_vmhwm']:.0f} MB** (kernel high-water mark; baseline after a warm-up search "
        f"{rss['baseline_after_warmup']:.0f} MB; ceiling {ceiling_mb:.0f} MB: "
        f"{'met' if rss['peak_vmhwm'] <= ceiling_mb else 'MISSED'}) while {r['clients']} clients uploaded a "
        f"{r['megapixels']:g}-megapixel flat PNG ({r['png_bytes'] / 1e6:.2f} MB) at once: answers {u['statuses']} "
        f"in {u['wall_s']} s (latency min/median/max {u['latency_s']['min']}/{u['latency_s']['median']}/"
        f"{u['latency_s']['max']} s).",
        f"- A request declaring a {r['declared_300mb_sent_10b']['declared_bytes'] / 2**20:.0f} MB body and sending "
        f"{r['declared_300mb_sent_10b']['sent_bytes']} bytes: **{r['declared_300mb_sent_10b']['status']} in "
        f"{r['declared_300mb_sent_10b']['seconds_to_answer'] * 1000:.1f} ms** (the body is never awaited).",
        f"- A chunked body without Content-Length: **{r['chunked_without_length']['status']}** after "
        f"{r['chunked_without_length']['sent_bytes_before_answer'] / 2**20:.1f} MB sent (limit "
        f"{r['chunked_without_length']['limit_bytes'] / 2**20:.0f} MB).",
        f"- Refused recipe adds: bundle unchanged byte for byte over {r['refused_adds']['files']} files: "
        f"**{r['refused_adds']['bundle_unchanged']}**.",
        f"- {r['png_text_bombs']['clients']} PNGs of {r['png_text_bombs']['png_bytes'] / 1e6:.2f} MB carrying "
        f"{r['png_text_bombs']['text_mb_each']} MB of zTXt text each, at once: statuses "
        f"{r['png_text_bombs']['statuses']}, RSS grew {r['png_text_bombs']['rss_growth_mb']:.0f} MB.",
        f"- A small photo after all of it: {r['small_photo_after_abuse_status']}.", "",
        "| add | status | ms |", "|---|---|---|",
        *(f"| {name} | {a['status']} | {a['seconds'] * 1000:.1f} |" for name, a in r["refused_adds"]["cases"].items()),
        "", f"App flags beyond the defaults: {' '.join(r['app_args']) or 'none'}.", "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True, help="a bundle with an image encoder and an index")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--megapixels", type=float, default=60.0)
    p.add_argument("--ceiling-mb", type=float, default=600.0, help="the peak RSS goal")
    p.add_argument("--app-arg", action="append", default=[], help="a flag for app.py (repeatable)")
    p.add_argument("--out", type=Path, default=RESULTS / "app_load")
    args = p.parse_args(argv)
    machine = machine_info()
    with tempfile.TemporaryDirectory(prefix="malm-app-load-") as work:
        result = run(args.bundle, args.clients, args.megapixels, args.app_arg, Path(work))
    result["bundle"] = args.bundle.name
    result["ceiling_mb"] = args.ceiling_mb
    result["ceiling_met"] = result["rss_mb"]["peak_vmhwm"] <= args.ceiling_mb
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"machine": machine, "result": result}, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result, machine, args.ceiling_mb))
    print(args.out.with_suffix(".md").read_text())
    return 0 if result["ceiling_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
