"""Run examples/cooking_assistant/app.py as a user does (its own process, a real port) for the app tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "examples" / "cooking_assistant" / "app.py"


def require(modules: tuple[str, ...], skip_var: str, what: str) -> None:
    """Fail (never skip silently) when the app's or the browser's dependencies are missing, unless the
    environment says these tests are not wanted here (`skip_var=1`)."""
    import importlib.util

    import pytest

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return
    if os.environ.get(skip_var, "") not in ("", "0"):
        pytest.skip(f"{what}: {skip_var} is set ({', '.join(missing)} not installed)")
    pytest.fail(f"{what} need {', '.join(missing)}: pip install 'malm[e2e]' (or set {skip_var}=1 to skip them "
                "on purpose)", pytrace=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def app_server(bundle: Path, log: Path, args: tuple[str, ...] = ()) -> Iterator[str]:
    with app_process(bundle, log, args) as (url, _):
        yield url


@contextmanager
def app_process(bundle: Path, log: Path, args: tuple[str, ...] = ()) -> Iterator[tuple[str, subprocess.Popen]]:
    """The app on a free port (`args`: its flags, e.g. limits): (url, process) once it answers."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(APP), "--bundle", str(bundle), "--port", str(port),
                                 "--threads", "1", *args], stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get_json(url + "/api/info")
                break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the app did not start (exit {proc.poll()}): {log.read_text()}") from None
                time.sleep(0.2)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def post_json(url: str, body: Any) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    return _send(req)


def post_photo(url: str, photo: bytes, filename: str = "photo.jpg", **fields: str) -> tuple[int, Any]:
    """multipart/form-data POST of one photo and text fields (what the page's FormData sends)."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="photo"; filename="{filename}"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n".encode() + photo + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    req = urllib.request.Request(url, data=b"".join(parts),
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    return _send(req)


def _send(req: urllib.request.Request) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
