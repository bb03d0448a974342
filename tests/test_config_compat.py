"""Presets and loss switches keep their meaning across the config format change: every preset resolves to the
config it resolved to before presets became diffs, old-format configs (saved beside existing checkpoints) load,
and two seeded optimizer steps of each preset's objectives give the losses they gave before.

The expected files in tests/data/ were written by running this module as a script on the commit before the
change (`python tests/test_config_compat.py`): `presets_before.json` (each preset's `to_dict()` in the old
format) and `losses_before.json` (each preset's losses over two seeded steps of a shrunk model). A preset whose
values change on purpose is re-recorded alone: `python tests/test_config_compat.py malm-hybrid-tiny`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from malm.cli import app
from malm.training.config import (
    PRESETS_DIR,
    ConfigError,
    ExperimentConfig,
    load_config_file,
    load_preset,
    preset_diff,
    preset_names,
    upgrade_config_dict,
)

DATA = Path(__file__).resolve().parent / "data"
# Shrinks every preset's model to run in a fraction of a second; method switches stay as shipped.
SHRINK = {
    "model.image.image_size": 32, "model.image.width": 32, "model.image.depth": 1, "model.image.heads": 2,
    "model.recipe.width": 32, "model.recipe.heads": 2, "model.embed_dim": 16, "loss.matching.heads": 2,
    "loss.cross_decoder.heads": 2,
}  # fmt: skip
# Modes no preset ships, checked too: (preset, overrides) by name.
VARIANTS = {
    "malm-tiny+paper": ("malm-tiny", {"loss.matching.mode": "paper", "loss.matching.pair_negatives": 2,
                                      "loss.matching.local_pairs": True}),
    "malm-tiny+paper-k0": ("malm-tiny", {"loss.matching.mode": "paper"}),
    "malm-tiny+decoder": ("malm-tiny", {"loss.matching.local_score": "decoder"}),
}


def _batch(b: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    title = torch.zeros(b, 5, dtype=torch.long)
    title[:, 0], title[:, 1], title[:, 2] = 1, torch.arange(b) + 5, 2
    return {"image": torch.randn(b, 3, 32, 32, generator=g), "title": title,
            "ingredients": torch.randint(3, 20, (b, 3, 4), generator=g),
            "instructions": torch.randint(3, 20, (b, 2, 4), generator=g), "index": torch.arange(b)}  # fmt: skip


def seeded_losses(name: str, steps: int = 2) -> list[dict[str, float]]:
    """Every reported value of `steps` optimizer steps of preset (or variant) `name`'s task, shrunk, seeded."""
    from malm.training.task import Task

    preset, extra = VARIANTS.get(name, (name, {}))
    cfg = load_preset(preset)
    shrink = SHRINK | extra
    if cfg.model.image.backbone == "vit":
        shrink["model.image.patch_size"] = 8
    cfg = cfg.with_overrides(shrink)
    torch.manual_seed(0)
    task = Task(cfg, vocab_size=24)
    task.train()
    opt = torch.optim.AdamW(task.param_groups(cfg.train), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    out = []
    for step in range(steps):
        task.seed_step(step)
        losses, report = task(_batch(6, g), progress=(step + 1) / 4)
        total = Task.total(losses)
        opt.zero_grad()
        total.backward()
        opt.step()
        task.after_step()
        out.append({"total": float(total.detach())} | {k: float(v) for k, v in sorted(report.items())})
    return out


def _before(name: str) -> Any:
    return json.loads((DATA / f"{name}_before.json").read_text())


@pytest.mark.parametrize("name", preset_names())
def test_each_preset_is_a_short_diff_that_resolves_to_the_config_it_was(name: str) -> None:
    text = (PRESETS_DIR / f"{name}.json").read_text()
    assert len(text.splitlines()) <= 35
    diff = json.loads(text)
    # Only what differs from its base, nothing restated.
    assert diff == preset_diff(load_preset(name), diff["base"])
    # The old full dump, read through the upgrade, is the same config, key for key.
    assert load_preset(name).to_dict() == ExperimentConfig.from_dict(_before("presets")[name]).to_dict()


def test_an_old_format_config_beside_a_checkpoint_loads_with_its_losses_switched_as_before(tmp_path: Path) -> None:
    old = _before("presets")["malm-tiny"]  # as a previous release saved it: triplet_weight, distill, enabled flags
    assert old["loss"]["triplet_weight"] == 1.0 and old["loss"]["distill"]["enabled"] is True
    old["loss"]["triplet_weight"] = 0.5
    old["loss"]["cross_decoder"]["weight"] = 2.0  # a weight kept while switched off stays off
    (tmp_path / "config.json").write_text(json.dumps(old))
    loss = load_config_file(tmp_path / "config.json").loss
    assert loss.retrieval_weight == 0.5 and loss.cross_decoder.weight == 0.0 and not loss.cross_decoder.enabled
    assert loss.self_distill.weight == 1.0 and loss.self_distill.ema_decay == 0.99
    assert loss.matching.global_weight == loss.matching.local_weight == 1.0 and loss.matching.enabled
    assert loss.mask.enabled and loss.mask.full_image_retrieval
    # A partial old config: missing `enabled` meant off (the old default), missing weights their old default.
    partial = upgrade_config_dict({"loss": {"triplet_weight": 1.0, "cross_decoder": {"enabled": True},
                                            "distill": {"ema_decay": 0.9}}})
    assert partial["loss"]["cross_decoder"] == {"weight": 1.0}
    assert partial["loss"]["self_distill"] == {"ema_decay": 0.9, "weight": 0.0}
    assert "matching" not in partial["loss"]  # absent: today's defaults, off, as the old default was
    assert not ExperimentConfig.from_dict(partial).loss.matching.enabled
    today = load_preset("malm-tiny").to_dict()
    assert upgrade_config_dict(today) == today


def test_an_old_key_in_set_names_its_new_name() -> None:
    with pytest.raises(ConfigError, match=r"loss.triplet_weight.*renamed: loss.retrieval_weight"):
        load_preset("ht-tiny").with_overrides({"loss.triplet_weight": 0.0})
    with pytest.raises(ConfigError, match=r"renamed: loss.self_distill.weight"):
        load_preset("ht-tiny").with_overrides({"loss.distill.enabled": True})


def test_a_preset_diff_on_a_file_base_and_a_cycle(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({"base": "ht-tiny", "name": "a", "train.lr": 0.5}))
    (tmp_path / "b.json").write_text(json.dumps({"base": "a.json", "name": "b", "loss": {"retrieval_weight": 2.0}}))
    cfg = load_preset(tmp_path / "b.json")
    assert (cfg.name, cfg.train.lr, cfg.loss.retrieval_weight, cfg.model.image.width) == ("b", 0.5, 2.0, 96)
    (tmp_path / "a.json").write_text(json.dumps({"base": "b.json"}))
    with pytest.raises(ConfigError, match="includes itself"):
        load_preset(tmp_path / "b.json")
    (tmp_path / "c.json").write_text(json.dumps({"base": "nope"}))
    with pytest.raises(ConfigError, match="preset base 'nope' not found"):
        load_preset(tmp_path / "c.json")


def test_show_config_prints_the_resolved_config_and_trains_nothing(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["train", "--preset", "tnlbt-tiny", "--set", "train.lr=0.25", "--show-config",
                                   "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    shown = json.loads(res.stdout)
    assert shown == load_preset("tnlbt-tiny").with_overrides({"train.lr": 0.25}).to_dict()
    assert not (tmp_path / "run").exists()


def test_show_config_of_a_run_saved_in_the_old_format(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(_before("presets")["tnlbt-tiny"]))
    res = CliRunner().invoke(app, ["train", "--resume", "--out", str(tmp_path / "run"), "--show-config"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == load_preset("tnlbt-tiny").to_dict()


@pytest.mark.parametrize("name", [*preset_names(), *VARIANTS])
def test_two_seeded_steps_give_the_losses_they_gave_before(name: str) -> None:
    torch.set_num_threads(1)
    expected, got = _before("losses")[name], seeded_losses(name)
    assert [sorted(x) for x in got] == [sorted(x) for x in expected]
    for e, g in zip(expected, got, strict=True):
        for key in e:
            assert g[key] == pytest.approx(e[key], rel=1e-5, abs=1e-6), (name, key)


def _write_expected(names: list[str]) -> None:
    """Record the expected values of `names` (all presets and variants when empty) from the code as it is."""
    presets = _before("presets") if names and (DATA / "presets_before.json").exists() else {}
    losses = _before("losses") if names and (DATA / "losses_before.json").exists() else {}
    for name in names or [*preset_names(), *VARIANTS]:
        if name in preset_names():
            presets[name] = load_preset(name).to_dict()
        losses[name] = seeded_losses(name)
    (DATA / "presets_before.json").write_text(json.dumps(presets, indent=1, sort_keys=True) + "\n")
    (DATA / "losses_before.json").write_text(json.dumps(losses, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":  # python tests/test_config_compat.py [PRESET ...]: re-record after a deliberate change
    torch.set_num_threads(1)
    _write_expected(sys.argv[1:])
    sys.exit(0)
