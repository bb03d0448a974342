"""Loss options: triplet reduction (H-T's "all" vs AdaMine's "violating"), the auxiliary-loss ramp,
per-rank mask randomness, near-duplicate families of the procedural benchmark, recipe-only batches."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from malm.training.config import ConfigError, ExperimentConfig, load_preset
from malm.training.losses.triplet import TripletLoss
from malm.training.task import Task


def _batch(b: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    title = torch.zeros(b, 5, dtype=torch.long)
    title[:, 0], title[:, 1], title[:, 2] = 1, torch.arange(b) + 5, 2
    ing = torch.randint(3, 20, (b, 3, 4), generator=g)
    ins = torch.randint(3, 20, (b, 2, 4), generator=g)
    return {"image": torch.randn(b, 3, 32, 32, generator=g), "title": title, "ingredients": ing,
            "instructions": ins, "index": torch.arange(b)}  # fmt: skip


# ------------------------------------------------------------------------------ triplet reduction


def test_triplet_reductions_on_a_hand_computed_example() -> None:
    # image_emb = I and recipe_emb = S^T make the score matrix S = [[0.9, 0.8], [0.1, 0.5]]; margin 0.3.
    s = torch.tensor([[0.9, 0.8], [0.1, 0.5]], dtype=torch.float64)
    eye = torch.eye(2, dtype=torch.float64)
    # image anchors: cost(0,1) = 0.3 + 0.8 - 0.9 = 0.2, cost(1,0) = 0.3 + 0.1 - 0.5 < 0
    # recipe anchors: cost(0,1) = 0.3 + 0.1 - 0.9 < 0, cost(1,0) = 0.3 + 0.8 - 0.5 = 0.6
    all_ = TripletLoss(0.3, reduction="all")(eye, s.t())
    violating = TripletLoss(0.3, reduction="violating")(eye, s.t())
    assert all_.item() == pytest.approx(0.2 / 4 + 0.6 / 4)  # mean over all B² entries, each direction
    assert violating.item() == pytest.approx(0.2 / 1 + 0.6 / 1)  # mean over the one violating triplet each


def test_all_reduction_is_ht_loss() -> None:
    """H-T (amzn/image-to-recipe-transformers src/utils/loss.py): (cost_s + cost_im).mean() over B x B."""
    g = torch.Generator().manual_seed(0)
    im = torch.nn.functional.normalize(torch.randn(6, 8, generator=g, dtype=torch.float64), dim=-1)
    rec = torch.nn.functional.normalize(torch.randn(6, 8, generator=g, dtype=torch.float64), dim=-1)
    d = 1 - im @ rec.t()  # cosine distances
    pos = torch.eye(6, dtype=torch.bool)
    cost_im = (0.3 + d.diag().view(6, 1) - d).clamp(min=0).masked_fill(pos, 0)
    cost_s = (0.3 + d.diag().view(1, 6) - d).clamp(min=0).masked_fill(pos, 0)
    ht = (cost_s + cost_im).mean()
    assert TripletLoss(0.3, reduction="all")(im, rec).item() == pytest.approx(ht.item(), abs=1e-12)


def test_presets_use_their_papers_reduction_and_bad_values_are_refused() -> None:
    assert load_preset("ht-tiny").loss.triplet_reduction == "all"
    assert load_preset("ht").loss.triplet_reduction == "all"
    assert load_preset("malm-tiny").loss.triplet_reduction == "violating"
    assert load_preset("tnlbt").loss.triplet_reduction == "violating"
    assert load_preset("tnlbt").train.batch_size == 768  # the large batch TNLBT is named for
    with pytest.raises(ConfigError, match="triplet_reduction"):
        load_preset("ht-tiny").with_overrides({"loss.triplet_reduction": "sum"})


# ------------------------------------------------------------------------------ auxiliary ramp


def test_aux_ramp_is_linear_from_zero_and_spares_the_triplet(tiny_preset: Callable[..., ExperimentConfig]) -> None:
    cfg = tiny_preset("malm-tiny", {"model.recipe.dropout": 0.0, "loss.aux_warmup_epochs": 2.0}, epochs=10)
    assert [cfg.loss.aux_ramp(e) for e in (0.0, 0.5, 1.0, 2.0, 7.0)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert load_preset("ht-tiny").loss.aux_ramp(0.0) == 1.0  # 0 = off
    torch.manual_seed(0)
    task = Task(cfg, vocab_size=40).train()
    losses, report = task(_batch(), progress=0.1)  # epoch 1 of 10: ramp 0.5
    assert report["aux_ramp"].item() == pytest.approx(0.5)
    assert losses["triplet_loss"].item() == pytest.approx(report["triplet_loss"].item())
    for key in ("recipe_ssl_loss", "match_itm_loss", "match_local_loss", "distill_loss"):
        assert losses[key].item() == pytest.approx(0.5 * report[key].item(), rel=1e-6), key
    with pytest.raises(ConfigError, match="aux_warmup_epochs"):
        load_preset("malm-tiny").with_overrides({"loss.aux_warmup_epochs": -1})


def test_infonce_retrieval_has_its_full_weight_at_step_0_while_auxiliaries_ramp(
        tiny_preset: Callable[..., ExperimentConfig]) -> None:
    # "Is this the retrieval loss" is the objective's own property, not its key's name: InfoNCE is not ramped.
    cfg = tiny_preset("malm-tiny", {"model.recipe.dropout": 0.0, "loss.retrieval": "infonce",
                                    "loss.aux_warmup_epochs": 1.0}, epochs=4)
    torch.manual_seed(0)
    task = Task(cfg, vocab_size=40).train()
    assert [type(o).__name__ for o in task.objectives if o.retrieval] == ["ContrastiveRetrieval"]
    task.seed_step(0)
    losses, report = task(_batch(), progress=0.0)  # step 0: ramp 0
    assert report["aux_ramp"].item() == 0.0
    assert losses["infonce_loss"].item() > 0.1
    assert losses["infonce_loss"].item() == pytest.approx(report["infonce_loss"].item())
    for key in ("recipe_ssl_loss", "match_itm_loss", "match_local_loss", "distill_loss"):
        assert report[key].item() != 0.0 and losses[key].item() == 0.0, key
    assert Task.total(losses).item() == pytest.approx(losses["infonce_loss"].item())  # step 0 trains InfoNCE alone


# ------------------------------------------------------------------------------ per-rank masks


def test_masks_differ_per_rank_repeat_per_step_and_leave_the_global_rng_alone(
        tiny_preset: Callable[..., ExperimentConfig]) -> None:
    cfg = tiny_preset("malm-tiny", {"model.recipe.dropout": 0.0})
    task = Task(cfg, vocab_size=40).train()

    def keep(step: int, rank: int) -> torch.Tensor:
        task.seed_step(step, rank)
        return task.keep_idx(8, torch.device("cpu"))

    state = torch.get_rng_state()
    a0, a1 = keep(5, 0), keep(5, 1)
    assert not torch.equal(a0, a1)  # rank 1 masks other patches than rank 0
    assert torch.equal(a0, keep(5, 0))  # same (seed, rank, step): same masks (exact resume)
    assert not torch.equal(a0, keep(6, 0))
    assert torch.equal(state, torch.get_rng_state())  # the global RNG (data order, dropout) is untouched
    other = Task(cfg.with_overrides({"train.seed": 1}), vocab_size=40).train()
    other.seed_step(5, 0)
    assert not torch.equal(a0, other.keep_idx(8, torch.device("cpu")))


# ------------------------------------------------------------------------------ families


def test_synth_families_come_from_the_generator(tmp_path: Path) -> None:
    from malm.training.data.families import CACHE_FILE, split_families
    from malm.training.synth.recipes import generate_recipes

    specs = generate_recipes(40, 3)
    (tmp_path / "synth.json").write_text(json.dumps({"generator": "malm.training.synth", "version": 1,
                                                     "seed": 3, "recipes": 40}))  # fmt: skip
    ids = [s.id for s in specs[::2]]
    prepared = SimpleNamespace(data_dir=tmp_path, cache_dir=tmp_path, split=lambda _n: SimpleNamespace(ids=ids))
    fam = split_families(prepared, "train")
    assert fam is not None and fam.tolist() == [s.family for s in specs[::2]]
    assert (tmp_path / CACHE_FILE).is_file()
    assert split_families(prepared, "train").tolist() == fam.tolist()  # from the cache
    # ids the generator does not know (another data set with a synth.json): no families rather than wrong ones
    foreign = SimpleNamespace(data_dir=tmp_path, cache_dir=tmp_path, split=lambda _n: SimpleNamespace(ids=["x"] * 5))
    assert split_families(foreign, "train") is None
    # no synth.json (Recipe1M): no family information
    plain = SimpleNamespace(data_dir=tmp_path / "none", cache_dir=tmp_path, split=lambda _n: SimpleNamespace(ids=ids))
    assert split_families(plain, "train") is None


# ------------------------------------------------------------------------------ recipe-only batches


def _data_with_imageless_recipes(root: Path) -> Path:
    from tests._tiny_run import make_dataset

    data = make_dataset(root, n_train=12)
    layer2 = json.loads((data / "layer2.json").read_text())
    layer1 = json.loads((data / "layer1.json").read_text())
    train_ids = [r["id"] for r in layer1 if r["partition"] == "train"]
    drop = set(train_ids[:3])  # three training recipes lose their photos
    (data / "layer2.json").write_text(json.dumps([e for e in layer2 if e["id"] not in drop]))
    return data


def test_recipe_only_batches_draw_imageless_recipes_and_feed_the_recipe_loss(
        tmp_path: Path, tiny_config: Callable[..., Path], train_cli: Callable[[list[str]], int]) -> None:
    from malm.training.data import prepare
    from malm.training.data.dataset import RecipeOnlyBatches

    data = _data_with_imageless_recipes(tmp_path / "data")
    prepared = prepare(data, min_freq=1)
    pool = RecipeOnlyBatches(prepared, "train")
    split = prepared.split("train")
    assert len(pool) == 3 and all(int(split.num_images[r]) == 0 for r in pool.rows)
    b = pool.batch(5, torch.Generator().manual_seed(0))
    assert b["ro_title"].shape[0] == 5 and set(b) == {"ro_title", "ro_ingredients", "ro_instructions"}
    assert torch.equal(b["ro_title"], pool.batch(5, torch.Generator().manual_seed(0))["ro_title"])
    cfg = tiny_config(tmp_path / "c.json", epochs=1, recipe_only_batch=4)
    out = tmp_path / "run"
    assert train_cli(["--data", str(data), "--preset", str(cfg), "--out", str(out), "--no-progress"]) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if x.get("type") == "train"]
    assert train and all(x["recipe_only_n"] == 4 and x["recipe_ssl_loss"] > 0 for x in train)
