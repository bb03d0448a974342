"""PNG curves of a training run from its metrics.jsonl: `malm plot RUN [--out DIR]`.

    losses.png   the total loss and each `*_loss` term against the optimizer step, with the learning rate
    val_r1.png   validation R@1 (image→recipe and recipe→image) against the epoch

matplotlib (`pip install 'malm[plot]'`), Agg backend: no display needed. Read-only on the run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from malm._atomic import atomic_path
from malm.errors import MalmError
from malm.metrics_log import JSONL, read_records


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise MalmError("malm plot needs matplotlib: pip install 'malm[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(records: list[dict[str, Any]], kind: str, key: str, x: str = "step") -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in records:
        if r.get("type") != kind:
            continue
        value: Any = r
        for part in key.split("/"):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, (int, float)) and x in r:
            xs.append(float(r[x]))
            ys.append(float(value))
    return xs, ys


def plot_run(run: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> list[Path]:
    """Write the run's curves as PNGs into `out` (default: the run directory); returns their paths."""
    run = Path(run)
    records = read_records(run / JSONL)
    train = [r for r in records if r.get("type") == "train"]
    if not train:
        raise MalmError(f"{run / JSONL}: no training records yet (nothing to plot)")
    out_dir = Path(out) if out is not None else run
    out_dir.mkdir(parents=True, exist_ok=True)
    plt = _pyplot()
    name = "/".join(run.resolve().parts[-2:])  # "demo/run": a run folder is often just "run"
    written = []

    loss_keys = sorted({k for r in train for k in r if k.endswith("_loss")})
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True, height_ratios=[3, 1])
    ax.plot(*_series(records, "train", "loss"), label="loss (total)", color="black", linewidth=2)
    for key in loss_keys:
        ax.plot(*_series(records, "train", key), label=key, linewidth=1)
    ax.set_ylabel("loss (mean over the logging window)")
    ax.set_title(f"{name}: training losses")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    lr = _series(records, "train", "lr")
    ax_lr.plot(*lr, color="tab:gray")
    if not lr[0]:
        ax_lr.text(0.5, 0.5, "no learning rate logged", ha="center", va="center", transform=ax_lr.transAxes)
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("optimizer step")
    ax_lr.grid(alpha=0.3)
    written.append(_save(fig, out_dir / "losses.png", atomic_path))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    drawn = False
    for direction, label in (("im2recipe", "image→recipe"), ("recipe2im", "recipe→image")):
        xs, ys = _series(records, "val", f"{direction}/R@1", x="epoch")
        if xs:
            ax.plot(xs, ys, marker="o", label=f"{label} R@1")
            drawn = True
    sizes = {r["key"] for r in records if r.get("type") == "val" and r.get("key") is not None}
    ax.set_title(f"{name}: validation R@1" + (f" ({', '.join(sorted(map(str, sizes)))} pairs)" if sizes else ""))
    ax.set_xlabel("epoch")
    ax.set_ylabel("R@1 (%)")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no validation records", ha="center", va="center", transform=ax.transAxes)
    written.append(_save(fig, out_dir / "val_r1.png", atomic_path))
    plt.close(fig)
    return written


def _save(fig: Any, path: Path, atomic_path: Any) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    os.chmod(path, 0o644)
    return path
