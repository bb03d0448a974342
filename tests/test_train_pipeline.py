"""The fast training path: the uint8 image cache, augmentation on the batch's device, a step loop that reads
nothing from the device between log lines, and the one entry (exact resume: tests/test_checkpoint.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from malm.preprocess import PreprocessConfig, preprocess
from malm.training import train as train_mod
from malm.training.data import RecipeImageDataset, prepare
from malm.training.data.dataset import device_transform, load_image, train_transform
from malm.training.data.image_cache import prepare_images, square_box
from malm.training.train import SeededItems


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, make_dataset: Callable[..., Path]) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "recipe1m", n_train=24)


def test_square_box_holds_the_eval_centre_crop() -> None:
    for w, h in [(300, 256), (256, 301), (37, 40), (41, 37), (256, 256), (500, 257)]:
        for side, size in [(256, 224), (37, 32), (9, 8)]:
            if min(w, h) != side:
                continue
            left, top, right, bottom = square_box(w, h, side, size)
            assert right - left == side and bottom - top == side and 0 <= left and right <= w and bottom <= h
            inner = (side - size) // 2
            assert (left + inner, top + inner) == ((w - size) // 2, (h - size) // 2), (w, h, side, size)


def test_image_cache_gives_eval_pixels_identical_to_the_files_and_is_reused(tmp_path: Path,
                                                                           make_dataset: Callable[..., Path]) -> None:
    root = make_dataset(tmp_path / "d", n_train=6, n_val=3, n_test=2)
    # Non-square photos of odd sizes: the cached square must still hold preprocess()'s exact centre crop.
    for k, path in enumerate(sorted((root / "images").rglob("*.jpg"))):
        rng = np.random.default_rng(k)
        Image.fromarray(rng.integers(0, 255, (30 + 7 * k, 50 + 3 * k, 3), dtype=np.uint8)).save(path)
    prepared = prepare(root, min_freq=1)
    cfg = PreprocessConfig.for_size(32)
    cache = prepare_images(prepared, cfg)
    assert cache.built and cache.manifest["photos"] == {"train": 6, "val": 3, "test": 2}
    assert not prepare_images(prepared, cfg).built  # unchanged: reused
    files = RecipeImageDataset(prepared, "val", cfg, train=False)
    cached = RecipeImageDataset(prepared, "val", cfg, train=False, images=cache.split("val"))
    for k in range(len(files)):
        a, b = files[k], cached[k]
        assert set(a) == set(b)
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["title"], b["title"])
    # Another size is another cache, built beside the first.
    assert prepare_images(prepared, PreprocessConfig.for_size(24)).built
    assert len(list(prepared.cache_dir.glob("images-*"))) == 2


def test_cached_train_items_then_device_transform_equal_the_decoding_path(tmp_path: Path,
                                                                          make_dataset: Callable[..., Path]) -> None:
    root = make_dataset(tmp_path / "d", n_train=8)  # square 24x24 photos: the crop range is the same
    prepared = prepare(root, min_freq=1)
    cfg = PreprocessConfig.for_size(32)
    files = SeededItems(RecipeImageDataset(prepared, "train", cfg, train=True), seed=3)
    cached = SeededItems(RecipeImageDataset(prepared, "train", cfg, train=True,
                                            images=prepare_images(prepared, cfg).split("train")), seed=3)
    batch = torch.utils.data.default_collate([cached[(1, k)] for k in range(8)])
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (8, 32, 32, 3)
    assert batch["flip"].dtype == torch.bool and 0 < int(batch["flip"].sum()) < 8  # both kinds present
    out = device_transform(batch, cfg)
    assert "flip" not in out and out["image"].dtype == torch.float32
    # The decoding path resizes each file again: same crop, same flip, pixels within resampling noise.
    ref = torch.stack([files[(1, k)]["image"] for k in range(8)])
    assert out["image"].shape == ref.shape
    assert (out["image"] - ref).abs().mean() < 0.05
    # Bit-level: the device normalisation is malm.preprocess.normalize's arithmetic.
    from malm.preprocess import normalize

    x = batch["image"][0].numpy()
    x = x[:, ::-1] if bool(batch["flip"][0]) else x
    assert torch.equal(out["image"][0], torch.from_numpy(normalize(np.ascontiguousarray(x), cfg)))


def test_load_and_decode_match_preprocess_for_an_odd_photo(tmp_path: Path) -> None:
    path = tmp_path / "x.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (41, 77, 3), dtype=np.uint8)).save(path)
    cfg = PreprocessConfig.for_size(32)
    from malm.preprocess import normalize
    from malm.training.data.dataset import center_crop
    from malm.training.data.image_cache import decode_square

    got = normalize(center_crop(decode_square(path, cfg), cfg.size), cfg)
    assert np.array_equal(got, preprocess(load_image(path, cfg), cfg))
    assert train_transform(load_image(path, cfg), cfg).shape == (3, 32, 32)


# ----------------------------------------------------------------------------------------- host syncs

# Ways Python code reads a tensor's value on the host: each is a device sync on CUDA.
_READS = ("item", "tolist", "cpu", "numpy", "nonzero", "__float__", "__int__", "__bool__", "__index__")


@pytest.mark.parametrize("method", ["ht", "malm"])
def test_step_loop_reads_nothing_from_the_device_between_log_lines(data: Path, tmp_path: Path, method: str,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   tiny_config: Callable[..., Path],
                                                                   train_cli: Callable[[list[str]], int]) -> None:
    """CUDA-free instrumentation: every host read of a tensor made by malm code while `train_step` runs is
    counted. The recipe encoder runs its accelerator path (every row, no row selection on the host)."""
    from malm.training.models import recipe

    monkeypatch.setattr(recipe, "GATHER_ROWS_ON", ())
    step_code = train_mod.train_step.__code__
    calls: list[str] = []
    steps = [0]

    def in_step() -> bool:
        f = sys._getframe(2)
        while f is not None:
            if f.f_code is step_code:
                return True
            f = f.f_back
        return False

    for name in _READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _name=name, _orig=original, **k):  # type: ignore[no-untyped-def]
            caller = sys._getframe(1).f_code.co_filename
            if "/malm/" in caller and in_step():
                calls.append(f"{_name} from {caller}:{sys._getframe(1).f_lineno}")
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    real_step = train_mod.train_step

    def step(*a, **k):  # type: ignore[no-untyped-def]
        steps[0] += 1
        return real_step(*a, **k)

    monkeypatch.setattr(train_mod, "train_step", step)
    # Workers decode in their own processes (their reads are CPU work, not device syncs).
    # ht-tiny, or malm-tiny (masking, matching, EMA self-distillation) + TNLBT's cross decoder and margins.
    preset, extra = ("ht-tiny", {}) if method == "ht" else (
        "malm-tiny", {"loss.cross_decoder.weight": 1.0, "loss.dynamic_margin.enabled": True})
    cfg = tiny_config(tmp_path / "c.json", preset, extra, num_workers=1, log_every=1000)
    assert train_cli(["--data", str(data), "--preset", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert steps[0] == 6, steps  # 24 pairs / batch 8 × 2 epochs: something was measured
    assert calls == [], calls[:10]
    train = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["type"] == "train"]
    assert [x["step"] for x in train] == [6] and np.isfinite(train[0]["loss"]) and train[0]["grad_norm"] > 0


def test_recipe_encoder_accelerator_path_equals_the_row_gathering_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from malm.training.config import RecipeEncoderConfig
    from malm.training.models import recipe

    torch.manual_seed(0)
    enc = recipe.HierarchicalRecipeEncoder(RecipeEncoderConfig(width=32, heads=2, dropout=0.0), 50, 16).eval()
    title = torch.randint(1, 50, (3, 6))
    ingr = torch.randint(1, 50, (3, 5, 7))
    ingr[0, 3:] = 0  # empty rows
    ingr[1, :, 4:] = 0  # trailing padding common to the batch
    instr = torch.randint(1, 50, (3, 4, 7))
    instr[2] = 0  # a recipe without instructions
    gathered = enc(title, ingr, instr)
    monkeypatch.setattr(recipe, "GATHER_ROWS_ON", ())
    dense = enc(title, ingr, instr)
    torch.testing.assert_close(dense.embedding, gathered.embedding, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dense.tokens, gathered.tokens, atol=1e-5, rtol=1e-5)
    assert torch.equal(dense.token_mask, gathered.token_mask)


def test_non_finite_loss_is_caught_at_the_next_read(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    tiny_config: Callable[..., Path]) -> None:
    from malm.errors import MalmError

    real = train_mod.Task.total

    def nan_at_two(losses):  # type: ignore[no-untyped-def]
        total = real(losses)
        nan_at_two.n += 1
        return total * float("nan") if nan_at_two.n == 2 else total

    nan_at_two.n = 0
    monkeypatch.setattr(train_mod.Task, "total", staticmethod(nan_at_two))
    cfg = tiny_config(tmp_path / "c.json", log_every=1000)
    with pytest.raises(MalmError, match="non-finite at step 1"):
        train_mod.run(train_mod.TrainOptions(data_dir=data, out_dir=tmp_path / "run", config=_config(cfg),
                                             progress_bar=False))
    assert not (tmp_path / "run" / "last.safetensors").exists()  # nothing saved with NaN weights


def _config(path: Path):  # type: ignore[no-untyped-def]
    from malm.training.config import load_preset

    return load_preset(str(path))


# -------------------------------------------------------------------------------------- resume, entry


def test_malm_train_is_the_one_entry_and_python_m_malm_runs_it() -> None:
    """`malm train` has every flag; torchrun starts the same command as `-m malm` (one parser, no second)."""
    from typer.testing import CliRunner

    from malm.cli import app

    res = CliRunner().invoke(app, ["train", "--help"])
    assert res.exit_code == 0 and "Usage: malm train" in res.output
    for flag in ("--data", "--preset", "--resume", "--save-every", "--set", "--json", "--image-init", "--show-config"):
        assert flag in res.output
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "malm", "train", "--out", "x"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 2 and "error: --preset is required" in proc.stderr, proc.stderr
