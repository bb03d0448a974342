"""Training logs people can read: --report-to tensorboard|csv and `malm plot RUN`."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from malm.cli import app
from malm.errors import MalmError
from malm.metrics_log import CSV, TB_DIR, MetricsLog, parse_report_to, read_records, scalars


def tb_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars of tensorboard event files, read with tensorboardX's protobufs (TFRecord framing)."""
    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def test_parse_and_flatten() -> None:
    assert parse_report_to(["tensorboard,csv", "csv"]) == ("tensorboard", "csv")
    assert parse_report_to(None) == () and parse_report_to(["none"]) == ()
    with pytest.raises(MalmError, match="wandb"):
        parse_report_to(["wandb"])
    rec = {"type": "val", "step": 3, "epoch": 1, "key": "8", "im2recipe": {"R@1": 25.0, "subsets": 1},
           "flag": True, "nan": float("nan")}
    assert dict(scalars(rec)) == {"im2recipe/R@1": 25.0, "im2recipe/subsets": 1.0}


def test_csv_and_tensorboard_follow_the_jsonl_and_resume(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path, ("csv", "tensorboard"))
    for step in (1, 2, 3):
        log.write({"type": "train", "step": step, "epoch": step / 3, "loss": 1.0 / step, "lr": 0.1})
    log.write({"type": "val", "step": 3, "epoch": 1, "im2recipe": {"R@1": 40.0}})
    log.close()
    rows = list(csv.DictReader((tmp_path / CSV).open()))
    assert [(r["type"], r["step"], r["name"]) for r in rows[:2]] == [("train", "1", "loss"), ("train", "1", "lr")]
    assert rows[-1] == {"type": "val", "step": "3", "epoch": "1", "name": "im2recipe/R@1", "value": "40.0"}
    tb = tb_scalars(tmp_path / TB_DIR)
    assert [s for s, _ in tb["train/loss"]] == [1, 2, 3] and tb["val/im2recipe/R1"] == [(3, 40.0)]

    # A run killed after step 3 and resumed from a checkpoint at step 2: the loop truncates metrics.jsonl,
    # the CSV is rebuilt from it, TensorBoard purges the events past step 2.
    jsonl = tmp_path / "metrics.jsonl"
    jsonl.write_text("".join(line + "\n" for line in jsonl.read_text().splitlines()[:2]))
    log = MetricsLog(tmp_path, ("csv", "tensorboard"), resume_step=2)
    log.write({"type": "train", "step": 3, "epoch": 1.0, "loss": 0.25, "lr": 0.1})
    log.close()
    rows = list(csv.DictReader((tmp_path / CSV).open()))
    assert [(r["step"], r["value"]) for r in rows if r["name"] == "loss"] == [("1", "1.0"), ("2", "0.5"), ("3", "0.25")]
    assert [r["step"] for r in read_records(jsonl)] == [1, 2, 3]


def test_rank_other_than_zero_writes_nothing(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path, ("csv",), enabled=False)
    log.write({"type": "train", "step": 1, "loss": 1.0})
    log.close()
    assert list(tmp_path.iterdir()) == []


def test_train_reports_and_plot(tiny_run: Path, tmp_path: Path) -> None:
    out = tiny_run  # trained with --report-to tensorboard,csv (tests/conftest.py)
    records = read_records(out / "metrics.jsonl")
    names = {row["name"] for row in csv.DictReader((out / CSV).open())}
    assert {"loss", "lr", "im2recipe/R@1"} <= names
    tb = tb_scalars(out / TB_DIR)
    assert [s for s, _ in tb["train/loss"]] == [x["step"] for x in records if x["type"] == "train"]
    assert [s for s, _ in tb["val/im2recipe/R1"]] == [x["step"] for x in records if x["type"] == "val"]

    r = CliRunner().invoke(app, ["plot", str(out), "--out", str(tmp_path / "png"), "--json"])
    assert r.exit_code == 0, r.output
    files = [Path(p) for p in json.loads(r.stdout)["files"]]
    assert [p.name for p in files] == ["losses.png", "val_r1.png"]
    from PIL import Image

    for p in files:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width >= 600
            # Not a blank canvas: curves in colour.
            assert len(im.convert("RGB").getcolors(1 << 20) or []) > 20


def test_plot_errors(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["plot", str(tmp_path)])
    assert isinstance(r.exception, MalmError) and "metrics.jsonl" in str(r.exception)
    (tmp_path / "metrics.jsonl").write_text('{"type": "done", "step": 0}\n{"type": "tra')  # torn last line
    r = CliRunner().invoke(app, ["plot", str(tmp_path)])
    assert isinstance(r.exception, MalmError) and "no training records" in str(r.exception)
