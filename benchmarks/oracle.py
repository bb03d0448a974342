"""The ingredient oracle's ceiling on a procedural benchmark: the R@1 a perfect ingredient recogniser would reach.

    python benchmarks/oracle.py runs/bench/synth-10000-0-128                  # test split, H-T 1k protocol
    python benchmarks/oracle.py runs/demo/data --size 0 --name demo            # the demo: all its test pairs
    python benchmarks/oracle.py DIR --write-log                                # a benchmark made before the log

Ranks each test photo's recipes by the ingredients drawn on it alone (`malm.training.synth.oracle`:
IDF-weighted Jaccard against each recipe's drawable ingredients), under `malm evaluate`'s protocol (the
split's first photos, 10 seeded subsets of --size; --size 0: all pairs as one set). Reports medR and
R@1/5/10 with ties broken in expectation (the ceiling), pessimistically and optimistically.
`--write-log` first writes DIR/drawn_ingredients.json for a benchmark generated without it (redraws the
split's photos in memory; same seed, same draws; no photo is rewritten).
Results: benchmarks/results/oracle_<name>.json and .md (atomic), with the machine's CPU features.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from malm._atomic import write_text_atomic  # noqa: E402
from malm.errors import MalmError  # noqa: E402
from malm.training.synth.oracle import TIE_RULES, IngredientOracle  # noqa: E402
from malm.training.synth.writer import write_drawn_log  # noqa: E402


def markdown(res: dict) -> str:
    lines = [f"# Ingredient oracle: {res['data']}", "",
             f"Split `{res['split']}`, {res['pairs']} pairs with a photo; subsets of {res['size']} "
             f"({res['subsets']} seeded, `malm evaluate`'s {res['protocol']} protocol, seed {res['seed']}). "
             "Recipes ranked for a photo by the ingredients the renderer drew on it alone (IDF-weighted "
             "Jaccard against each recipe's drawable ingredient names; amounts, title and container unused).", "",
             "| ties | medR | R@1 | R@5 | R@10 |", "|---|---|---|---|---|"]
    for rule in TIE_RULES:
        m = res[rule]
        lines.append(f"| {rule}{' (the ceiling)' if rule == 'expected' else ''} | {m['medR']:.1f} | "
                     f"{m['R@1']:.1f} | {m['R@5']:.1f} | {m['R@10']:.1f} |")
    lines += ["", f"Photos whose drawn ingredients fit another recipe of the split as well as their own: "
              f"{100 * res['photos_tied_with_another_recipe_share']:.1f}%; better: {100 * res['photos_not_top_share']:.1f}%.",
              "", f"Machine: {res['machine_summary']}; {res['cpu_seconds']:.1f} CPU s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from benchmarks.machine import machine_info, summary_line

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, help="a benchmark written by `malm data synth`")
    p.add_argument("--split", default="test")
    p.add_argument("--size", type=int, default=1000, help="subset size (0: all the split's pairs, as the demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write-log", action="store_true", help="first write the drawn-ingredients log (old data)")
    p.add_argument("--workers", type=int, default=1, help="processes redrawing photos for --write-log")
    p.add_argument("--name", default=None, help="results name (default: the data folder's name)")
    p.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    c0 = time.process_time()
    if args.write_log:
        path = write_drawn_log(args.data, partitions=[args.split], workers=args.workers)
        print(f"wrote {path}", file=sys.stderr)
    res = IngredientOracle.load(args.data).evaluate(args.split, size=args.size or None, seed=args.seed)
    machine = machine_info()
    res = {"data": str(args.data), **res, "machine": machine, "machine_summary": summary_line(machine),
           "cpu_seconds": round(time.process_time() - c0, 1)}
    name = args.name or args.data.name
    out = args.results_dir / f"oracle_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(res, indent=1) + "\n")
    write_text_atomic(out.with_suffix(".md"), markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MalmError as e:
        print(f"oracle: {e}", file=sys.stderr)
        sys.exit(2)
