"""Distillation: a few steps against a frozen teacher reduce the student–teacher cosine distance; the cache."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from malm.export.distill import DistillConfig, distill, mean_cosine_to_teacher
from malm.export.student import StudentConfig, StudentImageEncoder
from malm.training.config import ExperimentConfig
from malm.training.data import RecipeImageDataset, prepare
from malm.training.models.retrieval import RetrievalModel


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, make_dataset: Callable[..., Path],
          tiny_preset: Callable[..., ExperimentConfig]) -> dict[str, object]:
    root = tmp_path_factory.mktemp("distill")
    data = make_dataset(root / "data", n_train=32, n_val=2, n_test=2)
    config = tiny_preset()
    prepared = prepare(data, min_freq=config.data.min_freq, limits=config.data.limits())
    torch.manual_seed(0)
    teacher = RetrievalModel(config.model, vocab_size=len(prepared.vocab)).eval()
    pp = config.preprocess()
    ds = RecipeImageDataset(prepared, "train", pp, train=False)
    images = torch.stack([ds[i]["image"] for i in range(len(ds))])
    return {"root": root, "config": config, "prepared": prepared, "teacher": teacher, "pp": pp, "images": images}


def test_distillation_reduces_cosine_distance_to_teacher(setup: dict[str, object]) -> None:
    teacher, images = setup["teacher"], setup["images"]
    assert isinstance(teacher, RetrievalModel) and isinstance(images, torch.Tensor)
    scfg = StudentConfig(embed_dim=16, token_dim=32, image_size=32)
    torch.manual_seed(0)
    before = mean_cosine_to_teacher(teacher, StudentImageEncoder(scfg), images, 32)
    cfg = DistillConfig(epochs=4, batch_size=16, lr=3e-3, token_weight=1.0, threads=1)
    result = distill(teacher, setup["prepared"], setup["pp"], scfg, cfg)  # type: ignore[arg-type]
    after = mean_cosine_to_teacher(teacher, result.student, images, 32)
    assert not result.cached and len(result.history) == 4
    assert {"cosine", "relational", "tokens"} <= set(result.history[0])
    assert all(np.isfinite(v) for row in result.history for v in row.values())
    assert result.history[-1]["cosine"] < result.history[0]["cosine"]
    print(f"cosine to teacher before {before:.3f} after {after:.3f}")
    assert (1 - after) < 0.7 * (1 - before), (before, after)
    # the teacher is frozen: distillation never changes it
    assert all(p.grad is None for p in teacher.parameters())


def test_distilled_student_is_cached_per_teacher(setup: dict[str, object], tmp_path: Path) -> None:
    scfg = StudentConfig(embed_dim=16, image_size=32)
    cfg = DistillConfig(epochs=1, batch_size=16, max_steps=1, threads=1)
    args = (setup["teacher"], setup["prepared"], setup["pp"], scfg, cfg)
    first = distill(*args, cache_dir=tmp_path, teacher_hash="t1", pretrained=False)  # type: ignore[arg-type]
    assert not first.cached and first.path is not None and first.path.is_file()
    again = distill(*args, cache_dir=tmp_path, teacher_hash="t1", pretrained=False)  # type: ignore[arg-type]
    assert again.cached and again.key == first.key
    for a, b in zip(first.student.state_dict().values(), again.student.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    other = distill(*args, cache_dir=tmp_path, teacher_hash="t2", pretrained=False)  # type: ignore[arg-type]
    assert not other.cached and other.key != first.key


def test_distillation_drives_a_progress_bar_per_step(setup: dict[str, object]) -> None:
    from contextlib import contextmanager

    seen: dict[str, object] = {"advanced": 0}

    @contextmanager
    def bar(label: str, total: int):  # type: ignore[no-untyped-def]
        seen.update(label=label, total=total)

        def advance(n: int = 1) -> None:
            seen["advanced"] = int(seen["advanced"]) + n  # type: ignore[call-overload]

        yield advance

    cfg = DistillConfig(epochs=2, batch_size=16, max_steps=3, threads=1)
    result = distill(setup["teacher"], setup["prepared"], setup["pp"], StudentConfig(embed_dim=16, image_size=32),  # type: ignore[arg-type]
                     cfg, pretrained=False, bar=bar)
    assert seen == {"label": "distilling the student", "total": 3, "advanced": 3} and len(result.history) == 2
