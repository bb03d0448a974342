"""What trusting a bundle costs at load: the Ed25519 signature check, cached and full hash verification, and
`Retriever.load` before/after this version's checks (the same bundle loaded by another malm checkout).

    python -m benchmarks.bundle_trust --bundle runs/demo-bundle --before /work/main --repeat 15

Works on a private copy of --bundle (signed there). Goal: a signed 3,000-recipe bundle verifies in <= 50 ms at
load on 2 cores; a wrongly signed one is refused with one line. Writes benchmarks/results/bundle-trust.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

# Timed in a child with either checkout on PYTHONPATH: only the API both have.
LOAD_SNIPPET = """
import json, statistics, sys, time
from malm.sdk import Retriever
bundle, n, verify = sys.argv[1], int(sys.argv[2]), (True if sys.argv[3] == "cached" else "full")
times, cpu = [], []
for _ in range(n):
    t0, c0 = time.perf_counter(), time.process_time()
    Retriever.load(bundle, verify=verify).close()
    times.append((time.perf_counter() - t0) * 1e3)
    cpu.append((time.process_time() - c0) * 1e3)
print(json.dumps({"first_ms": times[0], "median_ms": statistics.median(times[1:]),
                  "median_cpu_ms": statistics.median(cpu[1:]), "n": n}))
"""


CPU_MS: dict[str, float] = {}  # process CPU time per measure: less sensitive than wall time to a busy machine


def _median_ms(fn: Callable[[], Any], n: int, name: str = "") -> float:
    times, cpu = [], []
    for _ in range(n):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    if name:
        CPU_MS[name] = round(statistics.median(cpu), 3)
    return round(statistics.median(times), 3)


def _load_in_child(checkout: Path, bundle: Path, n: int, cache: Path, verify: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(checkout), "MALM_CACHE_DIR": str(cache)}
    out = subprocess.run([sys.executable, "-c", LOAD_SNIPPET, str(bundle), str(n), verify], capture_output=True,
                         text=True, env=env, timeout=600)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1:]}
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in json.loads(out.stdout).items()}


def main(argv: list[str] | None = None) -> int:
    from benchmarks.machine import machine_info, summary_line
    from malm.bundle import MANIFEST
    from malm.errors import BundleError
    from malm.sdk import Retriever
    from malm.sdk.bundle_loader import open_bundle
    from malm.signing import TrustPolicy, check_signature, keygen, sign_bundle

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--before", type=Path, help="another malm checkout to time Retriever.load with (e.g. main)")
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--out", type=Path, default=RESULTS / "bundle-trust.json")
    a = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="malm-trust-bench-"))
    bundle = Path(shutil.copytree(a.bundle, work / "bundle", symlinks=True))
    os.environ["MALM_CACHE_DIR"] = str(work / "cache")
    priv, pub = keygen(work / "release")
    other_priv, _ = keygen(work / "other")
    n = a.repeat
    m = json.loads((bundle / MANIFEST).read_text())
    facts = {"recipes": m["index"]["count"], "files": len(m["files"]),
             "bytes": sum(f["bytes"] for f in m["files"].values()), "manifest_bytes": (bundle / MANIFEST).stat().st_size}

    # Before/after on the unsigned copy (both checkouts read it; each keeps its own verification stamps).
    load: dict[str, Any] = {}
    for verify in ("cached", "full"):  # alternated, so a change in the machine's load hits both sides
        for side, checkout in (("before", a.before), ("after", ROOT)):
            if checkout is not None:
                load[f"{side}_{verify}"] = _load_in_child(checkout, bundle, n, work / f"cache-{side}", verify)

    t0 = time.perf_counter()
    sign_bundle(bundle, priv)
    sign_ms = (time.perf_counter() - t0) * 1e3
    policy = TrustPolicy.resolve([pub])

    def signature_only() -> None:
        check_signature(bundle, (bundle / MANIFEST).read_bytes(), policy)

    open_bundle(bundle, True, policy=policy)  # stamp
    for f in bundle.rglob("*"):  # stamps skip files changed within the clock's tick: make them old
        st = f.stat()
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns - 10_000_000_000))
    time.sleep(0.3)
    open_bundle(bundle, True, policy=policy)
    results = {
        "signature_check_ms": _median_ms(signature_only, max(n, 50), "signature_check_ms"),
        "open_signed_cached_ms": _median_ms(lambda: open_bundle(bundle, True, policy=policy), n,
                                            "open_signed_cached_ms"),
        "open_unsigned_cached_ms": _median_ms(lambda: open_bundle(bundle, True), n, "open_unsigned_cached_ms"),
        "open_signed_full_hash_ms": _median_ms(lambda: open_bundle(bundle, "full", policy=policy), n,
                                               "open_signed_full_hash_ms"),
        "load_signed_cached_ms": _median_ms(lambda: Retriever.load(bundle, trusted_keys=[pub]).close(), n,
                                            "load_signed_cached_ms"),
        "load_signed_full_hash_ms": _median_ms(lambda: Retriever.load(bundle, trusted_keys=[pub],
                                                                      verify="full").close(), n,
                                               "load_signed_full_hash_ms"),
        "sign_ms": round(sign_ms, 1),
    }
    sign_bundle(bundle, other_priv)
    t0 = time.perf_counter()
    try:
        Retriever.load(bundle, trusted_keys=[pub])
        refusal = "NOT REFUSED"
    except BundleError as e:
        refusal = str(e)
    results["wrong_signature_refused_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
    results["wrong_signature_message"] = refusal.replace(str(work), "<tmp>")
    results["wrong_signature_one_line"] = "\n" not in refusal and refusal != "NOT REFUSED"
    goal = results["open_signed_cached_ms"] <= 50 and results["wrong_signature_one_line"]
    info = machine_info()
    doc = {"command": "python -m benchmarks.bundle_trust " + " ".join(argv or sys.argv[1:]), "bundle": facts,
           "load_before_after": load, **results, "cpu_ms": CPU_MS, "goal_signed_verify_le_50ms": goal,
           "machine": info}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=1) + "\n")
    md = [f"# Bundle trust cost ({facts['recipes']} recipes, {facts['files']} files, {facts['bytes'] / 1e6:.1f} MB)",
          "", f"Machine: {summary_line(info)}", "", f"Command: `{doc['command']}`", "",
          "| measure | wall ms (median) | CPU ms (median) |", "|---|---:|---:|"]
    md += [f"| {k} | {v} | {CPU_MS.get(k, '')} |" for k, v in results.items()
           if isinstance(v, (int, float)) and not isinstance(v, bool)]
    for side, r in load.items():
        md.append(f"| Retriever.load unsigned, verify {side.split('_')[1]} ({side.split('_')[0]}) | "
                  f"{r.get('median_ms', r)} (first {r.get('first_ms')}) | {r.get('median_cpu_ms')} |")
    md += ["", f"Wrongly signed: `{results['wrong_signature_message']}`", "",
           f"Goal (signed verify <= 50 ms at load, wrong signature one line): {'met' if goal else 'missed'}"]
    a.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
