"""The frozen hybrid stem's feature cache: maps equal the stem's output, items are the right crops, and
training / distillation read them (`malm/training/data/stem_cache.py`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from malm.errors import MalmError
from malm.export.distill import shared_stem_blocks
from malm.export.student import StudentConfig, StudentImageEncoder
from malm.preprocess import PreprocessConfig
from malm.training.config import ImageEncoderConfig, load_preset
from malm.training.data import RecipeImageDataset, prepare
from malm.training.data.image_cache import prepare_images
from malm.training.data.stem_cache import prepare_stem_features
from malm.training.models.hybrid import build_image_encoder, load_stem_weights

HYB = dict(backbone="hybrid_effnet_lite0", image_size=64, patch_size=16, stem_stages=4, width=32, depth=1, heads=2,
           mlp_ratio=2.0, drop_path=0.0)
PP = PreprocessConfig.for_size(64)  # resize 73: the stem's map of the square is 5×5, the crop's 4×4


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory, make_dataset: Callable[..., Path]) -> tuple:
    root = tmp_path_factory.mktemp("stem")
    data = make_dataset(root / "data", n_train=10, n_val=3, n_test=3)
    prepared = prepare(data, min_freq=1)
    images = prepare_images(prepared, PP).split("train")
    torch.manual_seed(0)
    encoder = build_image_encoder(ImageEncoderConfig(**HYB))  # type: ignore[arg-type]
    load_stem_weights(encoder)
    feats = prepare_stem_features(images, encoder.patch_embed, PP, prepared.cache_dir)
    return prepared, images, encoder, feats


def _normalized(square: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.array(square)).permute(2, 0, 1).float()[None] / 255.0
    mean, std = torch.tensor(PP.mean).view(1, 3, 1, 1), torch.tensor(PP.std).view(1, 3, 1, 1)
    return (x - mean) / std


def test_maps_are_the_stems_output_for_each_photo_as_is_and_mirrored(cached: tuple) -> None:
    _, images, encoder, feats = cached
    assert feats.features.shape[:2] == (images.pixels_all.shape[0], 2) and feats.stride == 16
    with torch.no_grad():
        for photo in (0, images.pixels_all.shape[0] - 1):
            x = _normalized(images.pixels_all[photo])
            for view, x_view in enumerate((x, x.flip(-1))):
                want = encoder.patch_embed.cnn(x_view)[0]
                got = torch.from_numpy(np.asarray(feats.features[photo, view], dtype=np.float32))
                torch.testing.assert_close(got, want, atol=0.02, rtol=0.01)  # stored as float16


def test_a_second_prepare_reuses_the_maps_and_another_stem_gets_its_own(cached: tuple) -> None:
    prepared, images, encoder, feats = cached
    again = prepare_stem_features(images, encoder.patch_embed, PP, prepared.cache_dir)
    assert again.root == feats.root
    other = build_image_encoder(ImageEncoderConfig(**HYB))  # type: ignore[arg-type] - random stem weights
    assert prepare_stem_features(images, other.patch_embed, PP, prepared.cache_dir).root != feats.root


def test_training_items_are_crops_of_the_map_on_the_stride_grid(cached: tuple) -> None:
    prepared, images, _, feats = cached
    ds = RecipeImageDataset(prepared, "train", PP, train=True, images=images)
    ds.use_stem_features(feats)
    side = feats.map_side
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        item = ds[0]
        assert item["image"].shape == (80, 4, 4) and item["image"].dtype == torch.float32 and "flip" not in item
        # Replay the item's draws (photo, crop, flip) and find the window it must be.
        torch.manual_seed(seed)
        row = int(ds.indices[0])
        k = int(torch.randint(0, images.count(row), (1,)).item())
        left = int(torch.randint(0, side - 4 + 1, (1,)).item())
        top = int(torch.randint(0, side - 4 + 1, (1,)).item())
        flip = bool(torch.rand(1).item() < 0.5)
        view = np.asarray(feats.features[images.photo_row(row, k), int(flip)], dtype=np.float32)
        col = side - 4 - left if flip else left  # the mirrored photo's window starts at the mirrored column
        assert torch.equal(item["image"], torch.from_numpy(view[:, top : top + 4, col : col + 4].copy()))
        seen.add((top, left, flip))
    assert len(seen) > 2  # crops and flips vary


def test_stem_features_need_the_training_image_cache(cached: tuple) -> None:
    prepared, _, _, feats = cached
    with pytest.raises(MalmError, match="image cache"):
        RecipeImageDataset(prepared, "train", PP, train=True).use_stem_features(feats)


def test_the_encoder_takes_the_map_in_place_of_the_image() -> None:
    torch.manual_seed(0)
    encoder = build_image_encoder(ImageEncoderConfig(**HYB)).eval()  # type: ignore[arg-type]
    load_stem_weights(encoder)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        from_image = encoder(x)
        from_map = encoder(encoder.patch_embed.cnn(x))
    torch.testing.assert_close(from_map.cls, from_image.cls)
    trains = build_image_encoder(ImageEncoderConfig(**{**HYB, "freeze_stem": False}))  # type: ignore[arg-type]
    with pytest.raises(MalmError, match="freeze_stem"):
        trains(torch.randn(2, 80, 4, 4))


def test_the_student_continues_from_the_shared_stem_blocks() -> None:
    """A hybrid teacher's frozen stem is the student's first blocks: feeding their output is the same network."""
    cfg = load_preset("ht-hybrid-tiny").with_overrides({"model.image.image_size": 64})
    from malm.training.task import Task

    teacher = Task(cfg, vocab_size=20).model
    load_stem_weights(teacher.image_encoder)
    pp = cfg.preprocess()
    student = StudentImageEncoder(StudentConfig(embed_dim=cfg.model.embed_dim, image_size=64)).eval()
    k = shared_stem_blocks(teacher, student.cfg, pp)
    assert k == 1 + 2 + 2 + 3  # the blocks of Lite0's first 4 stages
    assert shared_stem_blocks(teacher, StudentConfig(embed_dim=cfg.model.embed_dim, image_size=96), pp) == 0
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        whole = student.features(x)[0]
        resumed = student.features_from_block(teacher.image_encoder.patch_embed.cnn(x), k)[0]
    torch.testing.assert_close(resumed, whole, atol=1e-5, rtol=1e-4)
    student.freeze_first_blocks(k)
    student.train()
    frozen = [student.backbone._conv_stem, student.backbone._bn0, *student.backbone._blocks[:k]]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(not m.training for m in frozen) and student.backbone._blocks[k].training
    assert all(p.requires_grad for p in student.backbone._blocks[k].parameters())


def test_training_reads_the_cached_maps(tmp_path: Path, make_dataset: Callable[..., Path],
                                        tiny_config: Callable[..., Path]) -> None:
    """Through `malm train`: a frozen hybrid trains on the cached maps; with train.stem_cache=false it does not."""
    import json
    import subprocess
    import sys


    data = make_dataset(tmp_path / "data", n_train=16, n_val=4, n_test=4)
    cfg_path = tiny_config(tmp_path / "c.json", epochs=1)
    d = json.loads(cfg_path.read_text())
    d["model"]["image"].update({"backbone": "hybrid_effnet_lite0", "image_size": 32, "patch_size": 16, "stem_stages": 4})
    cfg_path.write_text(json.dumps(d))
    for flag, expect in (("true", True), ("false", False)):
        res = subprocess.run([sys.executable, "-m", "malm.cli", "train", "--data", str(data), "--preset", str(cfg_path),
                              "--out", str(tmp_path / f"run-{flag}"), "--no-progress", "--set",
                              f"train.stem_cache={flag}"], capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
        assert ("stem features cached" in res.stderr) is expect, res.stderr[-1500:]
