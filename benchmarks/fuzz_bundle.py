"""Property-based fuzz of whole bundles: hypothesis mutates a real bundle's manifest and its recipe store's
rows, then loads the bundle and searches it. Every outcome must be a result or a `BundleError`; any other
exception fails the property (hypothesis shrinks it), and a crash of the process (hnswlib, ONNX Runtime,
SQLite) is caught by the parent, which runs the fuzz in a child process.

    python -m benchmarks.fuzz_bundle --manifests 3000 --rows 2000 --out runs/fuzz-bundle   # the long run
    python -m benchmarks.fuzz_bundle --manifests 100 --rows 60 --child                     # what CI runs

The summary (JSON on stdout and in --out/summary.json, with the machine) is what docs/reliability.md reports.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _strategies() -> Any:
    from hypothesis import strategies as st

    ints = st.one_of(st.integers(-3, 70), st.integers(-(2**70), 2**70),
                     st.sampled_from([0, 1, -1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64, 30_000_000, 10**9, 10**30]))
    floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -1.0, 1e308, 0.5]))
    text = st.one_of(st.text(max_size=30), st.sampled_from(
        ["", "..", "../x", "/etc/passwd", "encoders/image_fp32.onnx", "index/recipes.hnsw", "ip", "l2", "cosine",
         "int8", "late_interaction", "matching_head", "\x00", "\ud800", "a" * 5000, "[/]", "center"]))
    leaf = st.one_of(st.none(), st.booleans(), ints, floats, text)
    value = st.recursive(leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(text, inner, max_size=4)), max_leaves=8)
    return st, value, text


def _paths(d: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(d, dict):
        for k, v in d.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out += _paths(v, (*prefix, i))
    return out


def _apply(m: dict[str, Any], path: tuple[Any, ...], action: str, value: Any, key: str) -> None:
    parent: Any = m
    for p in path[:-1]:
        parent = parent[p]
    last = path[-1]
    if action == "set":
        parent[last] = value
    elif action == "delete" and isinstance(parent, dict):
        parent.pop(last, None)
    elif action == "add" and isinstance(parent[last], dict):
        parent[last][key] = value
    elif action == "deep":
        v: Any = value
        for _ in range(40 + min(len(key), 30) * 20):  # <= 640 levels: json.dumps recurses (the parser's
            # RecursionError beyond ~1,000 levels is tested in tests/test_bundle_trust.py)
            v = [v]
        parent[last] = v


class Fuzz:
    """One bundle copy under a temp dir; each example rewrites it from the pristine files, then loads it."""

    def __init__(self, work: Path) -> None:
        sys.path.insert(0, str(ROOT / "tests"))
        from _sdk_bundle import make_bundle, photo

        os.environ["MALM_CACHE_DIR"] = str(work / "cache")
        self.pristine = make_bundle(work / "pristine", 30)
        self.bundle = work / "b"
        shutil.copytree(self.pristine, self.bundle)
        self.manifest = json.loads((self.pristine / "manifest.json").read_text())
        self.store_rel = self.manifest["index"]["store"]
        self.store_bytes = (self.pristine / self.store_rel).read_bytes()
        self.photo = photo(3)
        self.outcomes: Counter[str] = Counter()
        self.current = work / "current.json"

    def run(self, kind: str, manifest_text: str | None, store_bytes: bytes | None, detail: Any) -> None:
        from malm.bundle import sha256_path
        from malm.errors import BundleError
        from malm.sdk import Retriever

        self.current.write_text(json.dumps({"kind": kind, "detail": detail}, default=repr)[:100_000])
        store = self.bundle / self.store_rel
        store.write_bytes(store_bytes if store_bytes is not None else self.store_bytes)
        if manifest_text is None:  # a store attack: the manifest vouches for the new store (the attacker owns both)
            m = copy.deepcopy(self.manifest)
            digest, size = sha256_path(store)
            m["files"][self.store_rel] = {"sha256": digest, "bytes": size}
            manifest_text = json.dumps(m)
        (self.bundle / "manifest.json").write_text(manifest_text, encoding="utf-8", errors="surrogatepass")
        try:
            with Retriever.load(self.bundle, threads=1) as r:
                r.search(self.photo, k=3, exclude_ingredients=["peanut butter"])
                r.search(self.photo, k=40, rerank=r.can_rerank)
            self.outcomes[f"{kind}:worked"] += 1
        except BundleError:
            self.outcomes[f"{kind}:bundle_error"] += 1
        except Exception as e:
            self.outcomes[f"{kind}:other:{type(e).__name__}"] += 1
            raise

    def mutate_manifest(self, data: Any, value_st: Any, text_st: Any) -> tuple[str, Any]:
        from hypothesis import strategies as st

        m = copy.deepcopy(self.manifest)
        edits = []
        for _ in range(data.draw(st.integers(1, 3))):
            paths = [p for p in _paths(m) if p]
            path = data.draw(st.sampled_from(paths))
            action = data.draw(st.sampled_from(["set", "set", "set", "delete", "add", "deep"]))
            value, key = data.draw(value_st), data.draw(text_st)
            _apply(m, path, action, value, key)
            edits.append((path, action, value, key))
        return json.dumps(m, allow_nan=True, ensure_ascii=data.draw(st.booleans())), edits

    def mutate_store(self, data: Any, value_st: Any) -> tuple[bytes, Any]:
        from hypothesis import strategies as st

        tmp = self.bundle.parent / "store-edit.sqlite"
        tmp.write_bytes(self.store_bytes)
        cols = ["id", "title", "ingredients", "instructions", "url", "tags", "names", "label"]
        edits = []
        with sqlite3.connect(tmp) as conn:
            for _ in range(data.draw(st.integers(1, 3))):
                what = data.draw(st.sampled_from(["cell", "cell", "cell", "json", "delete", "drop", "meta"]))
                label = data.draw(st.integers(-1, 31))
                col = data.draw(st.sampled_from(cols))
                value = data.draw(value_st)
                cell: Any = value if isinstance(value, (str, int, float, type(None))) and not (
                    isinstance(value, int) and abs(value) >= 2**63) else json.dumps(value, default=repr)
                if isinstance(cell, str):
                    cell = cell.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
                edits.append((what, label, col, repr(value)[:200]))
                try:
                    if what == "cell":
                        conn.execute(f"UPDATE recipes SET {col} = ? WHERE label = ?", (cell, label))
                    elif what == "json":
                        conn.execute(f"UPDATE recipes SET {col} = ? WHERE label = ?",
                                     (json.dumps(value, default=repr), label))
                    elif what == "delete":
                        conn.execute("DELETE FROM recipes WHERE label = ?", (label,))
                    elif what == "drop":
                        conn.execute(data.draw(st.sampled_from(["DROP TABLE ingredient_words",
                                                                "DROP TABLE meta", "DELETE FROM ingredient_words"])))
                    else:
                        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (cell,))
                except (sqlite3.Error, OverflowError):
                    pass  # SQLite refused the edit itself (a constraint): the row stays as it was
        if data.draw(st.booleans()) and data.draw(st.booleans()):
            raw = bytearray(tmp.read_bytes())
            for _ in range(data.draw(st.integers(1, 8))):
                raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
            edits.append(("bytes",))
            return bytes(raw), edits
        return tmp.read_bytes(), edits


def child(manifests: int, rows: int, out: Path, seed: int, shrink: bool = True) -> int:
    """Run both properties here (the parent watches for a crash). Exit 0 and summary.json when they hold."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st

    out.mkdir(parents=True, exist_ok=True)
    fuzz = Fuzz(Path(tempfile.mkdtemp(prefix="malm-fuzz-bundle-")))
    st_mod, value_st, text_st = _strategies()
    from hypothesis import Phase

    common: dict[str, Any] = dict(deadline=None, database=None, derandomize=False,
                                  suppress_health_check=list(HealthCheck))
    if not shrink:
        common["phases"] = [Phase.explicit, Phase.reuse, Phase.generate]
    t0 = time.perf_counter()
    failures: list[str] = []

    @hseed(seed)
    @settings(max_examples=max(manifests, 1), **common)
    @given(data=st.data())
    def manifest_property(data: Any) -> None:
        text, edits = fuzz.mutate_manifest(data, value_st, text_st)
        fuzz.run("manifest", text, None, edits)

    @hseed(seed + 1)
    @settings(max_examples=max(rows, 1), **common)
    @given(data=st.data())
    def store_property(data: Any) -> None:
        raw, edits = fuzz.mutate_store(data, value_st)
        fuzz.run("store", None, raw, edits)

    for prop in (manifest_property, store_property):
        try:
            prop()
        except Exception as e:  # the property failed: hypothesis has shrunk and printed the example
            for sub in getattr(e, "exceptions", None) or [e]:
                tb = "".join(traceback.format_tb(sub.__traceback__)[-4:])
                failures.append(f"{prop.__name__}: {type(sub).__name__}: {str(sub)[:1500]}\n{tb[-2500:]}")
    counts = dict(sorted(fuzz.outcomes.items()))
    total = {k: sum(v for kk, v in counts.items() if kk.startswith(k + ":")) for k in ("manifest", "store")}
    summary = {"examples": total, "outcomes": counts, "failures": failures, "seconds": round(time.perf_counter() - t0, 1),
               "crashes": 0, "seed": seed}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifests", type=int, default=3000, help="generated malformed manifests")
    ap.add_argument("--rows", type=int, default=2000, help="generated malformed store edits")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/fuzz-bundle"))
    ap.add_argument("--child", action="store_true", help="run here, not in a watched child process")
    ap.add_argument("--no-shrink", action="store_true", help="report a failure as found (faster)")
    ap.add_argument("--result", type=Path, help="also write the summary with the machine info here (JSON)")
    a = ap.parse_args(argv)
    if a.child:
        return child(a.manifests, a.rows, a.out, a.seed, not a.no_shrink)
    cmd = [sys.executable, "-m", "benchmarks.fuzz_bundle", "--child", "--manifests", str(a.manifests), "--rows",
           str(a.rows), "--seed", str(a.seed), "--out", str(a.out), *(["--no-shrink"] if a.no_shrink else [])]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    summary_path = a.out / "summary.json"
    if proc.returncode < 0 or not summary_path.is_file():
        last = max(Path(tempfile.gettempdir()).glob("malm-fuzz-bundle-*/current.json"),
                   key=lambda p: p.stat().st_mtime, default=None)
        print(f"fuzz child crashed (status {proc.returncode}); last input: {last and last.read_text()[:2000]}")
        return 2
    summary = json.loads(summary_path.read_text())
    if a.result:
        from benchmarks.machine import machine_info

        a.result.parent.mkdir(parents=True, exist_ok=True)
        a.result.write_text(json.dumps({**summary, "command": " ".join(["python -m benchmarks.fuzz_bundle",
                                                                          *(argv or sys.argv[1:])]),
                                        "machine": machine_info()}, indent=1) + "\n")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
