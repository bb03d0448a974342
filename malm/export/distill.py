"""Distil the frozen teacher's image encoder into the edge student (no labels needed).

Loss = cosine(student, teacher image embedding)
     + relational_weight * KL(teacher ‖ student) over similarities to the teacher's recipe embeddings
     + token_weight * cosine(student tokens, teacher patch tokens pooled to the student's grid)   [--tokens]

The teacher stays in eval mode under no_grad (open_clip's distill task); its recipe embeddings for a bank
of training recipes are computed once. The result is cached next to the checkpoint, keyed by the teacher
weights, the student config and this config, so exporting several targets distils once.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from malm._atomic import atomic_path, write_text_atomic
from malm.errors import MalmError
from malm.export.context import Progress, no_progress
from malm.export.losses import EmbeddingCosineLoss, RelationalRankingLoss, TokenCosineLoss
from malm.export.student import StudentConfig, StudentImageEncoder
from malm.preprocess import PreprocessConfig
from malm.training.data import RecipeImageDataset, RecipeTextDataset
from malm.training.data.image_cache import prepare_images
from malm.training.data.stem_cache import prepare_stem_features
from malm.training.embed import embed_recipes
from malm.training.lite0_stages import lite0_blocks
from malm.training.models.hybrid import HybridViT

CACHE_DIR = "export-cache"


@dataclass(frozen=True)
class DistillConfig:
    epochs: int = 10  # passes over the training images
    batch_size: int = 32  # images per step
    lr: float = 1e-3  # AdamW learning rate of the new heads (projection, token head)
    backbone_lr: float = 3e-4  # AdamW learning rate of the ImageNet backbone
    weight_decay: float = 1e-4
    relational_weight: float = 1.0  # weight of the recipe-ranking KL term
    temperature: float = 0.05  # softmax temperature of the ranking term
    token_weight: float = 0.0  # weight of token distillation (set when exporting tokens)
    recipe_bank: int = 4096  # teacher recipe embeddings the ranking term ranks against (plus the batch's own)
    max_steps: int = 0  # stop after this many steps (0 = no limit; tests use it)
    seed: int = 0
    threads: int = 2  # torch intra-op threads while distilling

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.max_steps < 0 or self.threads < 1:
            raise ValueError("distill: epochs >= 0, batch_size >= 1, max_steps >= 0, threads >= 1")
        if self.lr <= 0 or self.backbone_lr < 0 or self.temperature <= 0:
            raise ValueError("distill: lr and temperature must be > 0, backbone_lr >= 0")
        if self.relational_weight < 0 or self.token_weight < 0 or self.recipe_bank < 0:
            raise ValueError("distill: weights and recipe_bank must be >= 0")


class TeacherImage(nn.Module):
    """The teacher's image tower as (embedding, tokens): the same face the student and exporters use."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # One ViT pass for both outputs: project_image(cls) is exactly what encode_image returns.
        feats = self.model.image_features(images)
        return self.model.project_image(feats.cls), feats.tokens


class StudentFeatures(nn.Module):
    """`student.features` as a module, so exporters see (embedding, tokens) from both encoders."""

    def __init__(self, student: StudentImageEncoder) -> None:
        super().__init__()
        self.student = student

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.student.features(images)


@dataclass
class DistillResult:
    student: StudentImageEncoder
    history: list[dict[str, float]]
    cached: bool
    key: str
    path: Path | None
    seconds: float


def _to_student_size(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def teacher_recipe_bank(model: nn.Module, prepared: Any, split: str, limit: int, batch: int = 256,
                        seed: int = 0) -> torch.Tensor:
    """The teacher's embeddings of up to `limit` recipes of `split` (seeded choice): what the ranking term ranks."""
    ds = RecipeTextDataset(prepared, split)
    if limit <= 0 or len(ds) == 0:
        return torch.zeros(0, 0)
    idx = np.random.default_rng(seed).permutation(len(ds))[:limit]
    return embed_recipes(model, [ds[int(j)] for j in idx], batch=batch)


def cache_key(teacher_hash: str, student_cfg: StudentConfig, cfg: DistillConfig) -> str:
    blob = json.dumps({"teacher": teacher_hash, "student": student_cfg.to_dict(), "distill": asdict(cfg),
                       "version": 2}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_cached(cache_dir: Path, key: str, student_cfg: StudentConfig) -> StudentImageEncoder | None:
    path = cache_dir / f"student-{key}.safetensors"
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    student = StudentImageEncoder(student_cfg, pretrained=False)
    try:
        student.load_state_dict(load_file(str(path)))
    except Exception:  # noqa: BLE001 - a corrupt cache entry is simply rebuilt
        return None
    return student.eval()


def save_cached(cache_dir: Path, key: str, student: StudentImageEncoder, meta: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"student-{key}.safetensors"
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in student.state_dict().items()}, str(tmp))
    write_text_atomic(path.with_suffix(".json"), json.dumps(meta, indent=2, sort_keys=True))
    return path


def distill(teacher: nn.Module, prepared: Any, teacher_pp: PreprocessConfig, student_cfg: StudentConfig,
            cfg: DistillConfig, *, cache_dir: Path | None = None, teacher_hash: str = "",
            progress: Callable[[str], None] | None = None, pretrained: bool = True,
            bar: Progress = no_progress) -> DistillResult:
    """Train (or load from cache) a student for `teacher` on the training split's images.

    `progress` gets a line per epoch; `bar(label, total_steps)` (e.g. malm.progress.progress) is advanced
    once per optimizer step."""
    key = cache_key(teacher_hash, student_cfg, cfg)
    if cache_dir is not None and teacher_hash:
        cached = load_cached(cache_dir, key, student_cfg)
        if cached is not None:
            meta_path = cache_dir / f"student-{key}.json"
            history = json.loads(meta_path.read_text()).get("history", []) if meta_path.is_file() else []
            return DistillResult(cached, history, True, key, cache_dir / f"student-{key}.safetensors", 0.0)
    log = progress or (lambda _msg: None)
    started = time.monotonic()
    torch.manual_seed(cfg.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        teacher.eval()
        student = StudentImageEncoder(student_cfg, pretrained=pretrained)
        dataset, first_block = _training_images(teacher, student, prepared, teacher_pp, student_cfg, pretrained, log)
        if len(dataset) == 0:
            raise MalmError("distillation needs training images, but the data's train split has none")
        bank = teacher_recipe_bank(teacher, prepared, "train", cfg.recipe_bank, seed=cfg.seed)
        loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=False,
                                             num_workers=0, generator=torch.Generator().manual_seed(cfg.seed))
        heads = [p for n, p in student.named_parameters() if not n.startswith("backbone.")]
        groups = [{"params": heads, "lr": cfg.lr}]
        if cfg.backbone_lr > 0:
            groups.append({"params": [p for p in student.backbone.parameters() if p.requires_grad],
                           "lr": cfg.backbone_lr})
        else:
            student.backbone.requires_grad_(False)
        opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        total = cfg.epochs * len(loader) if not cfg.max_steps else min(cfg.max_steps, cfg.epochs * len(loader))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + np.cos(np.pi * min(s, total) / max(total, 1))))
        history: list[dict[str, float]] = []
        with bar("distilling the student", total) as advance:
            _train_epochs(cfg, student, teacher, loader, bank, opt, sched, student_cfg, history, log, advance,
                          first_block)
        student.eval()
    finally:
        torch.set_num_threads(threads)
    seconds = time.monotonic() - started
    path = None
    if cache_dir is not None and teacher_hash:
        meta = {"key": key, "teacher": teacher_hash, "student": student_cfg.to_dict(), "distill": asdict(cfg),
                "history": history, "seconds": seconds}
        try:
            path = save_cached(cache_dir, key, student, meta)
        except OSError as e:  # a read-only run directory: export still works, the next one distils again
            log(f"could not cache the distilled student in {cache_dir} ({e}); continuing without the cache")
    return DistillResult(student, history, False, key, path, seconds)


def shared_stem_blocks(teacher: nn.Module, student_cfg: StudentConfig, teacher_pp: PreprocessConfig) -> int:
    """How many of the student's first backbone blocks are the teacher's frozen hybrid stem (0: none).

    A hybrid teacher's frozen stem is the first `stem_stages` stages of the same ImageNet EfficientNet-Lite0
    the student starts from, on the same input (same size and normalization): those blocks stay frozen in
    the student too, and both read one cached feature map per photo instead of running the stem each step.
    """
    encoder = getattr(teacher, "image_encoder", None)
    if not isinstance(encoder, HybridViT) or not encoder.cfg.freeze_stem:
        return 0
    if student_cfg.image_size != teacher_pp.size or tuple(student_cfg.mean) != tuple(teacher_pp.mean) \
            or tuple(student_cfg.std) != tuple(teacher_pp.std):
        return 0
    return lite0_blocks(encoder.cfg.stem_stages)


def _training_images(teacher: nn.Module, student: StudentImageEncoder, prepared: Any, teacher_pp: PreprocessConfig,
                     student_cfg: StudentConfig, pretrained: bool, log: Callable[[str], None]) -> tuple[Any, int]:
    """The training photos as the loop reads them, and the first student block that trains on them."""
    first_block = shared_stem_blocks(teacher, student_cfg, teacher_pp) if pretrained else 0
    if not first_block:
        return RecipeImageDataset(prepared, "train", teacher_pp, train=True), 0
    images = prepare_images(prepared, teacher_pp, log=log).split("train")
    dataset = RecipeImageDataset(prepared, "train", teacher_pp, train=True, images=images)
    stem = teacher.image_encoder.patch_embed  # type: ignore[union-attr]
    dataset.use_stem_features(prepare_stem_features(images, stem, teacher_pp, prepared.cache_dir, log=log))
    student.freeze_first_blocks(first_block)
    log(f"student: its first {first_block} blocks are the teacher's frozen ImageNet stem: kept frozen, "
        "both read the cached stem features")
    return dataset, first_block


def _train_epochs(cfg: DistillConfig, student: StudentImageEncoder, teacher: nn.Module, loader: Any,
                  bank: torch.Tensor, opt: Any, sched: Any, student_cfg: StudentConfig,
                  history: list[dict[str, float]], log: Callable[[str], None],
                  advance: Callable[[int], None], first_block: int = 0) -> int:
    """The distillation loop; appends one row per epoch to `history`; returns the steps taken. With
    `first_block` > 0 the batch's "image" is the shared stem's feature map (`_training_images`)."""
    cos_loss, rel_loss, tok_loss = EmbeddingCosineLoss(), RelationalRankingLoss(cfg.temperature), TokenCosineLoss()
    step = 0
    total = cfg.epochs * len(loader) if not cfg.max_steps else min(cfg.max_steps, cfg.epochs * len(loader))
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        student.train()
        sums: dict[str, float] = {}
        n = 0
        for batch in loader:
            if cfg.max_steps and step >= cfg.max_steps:
                break
            images = batch["image"]
            with torch.no_grad():
                feats = teacher.image_features(images)
                t_emb = teacher.project_image(feats.cls)
                own = teacher.encode_recipe(batch["title"], batch["ingredients"], batch["instructions"])
                recipes = torch.cat([own, bank]) if len(bank) else own
            if first_block:
                s_emb, s_tok = student.features_from_block(images, first_block)
            else:
                s_emb, s_tok = student.features(_to_student_size(images, student_cfg.image_size))
            losses = {"cosine": cos_loss(s_emb, t_emb)}
            if cfg.relational_weight > 0:
                losses["relational"] = cfg.relational_weight * rel_loss(s_emb, t_emb, recipes)
            if cfg.token_weight > 0 and s_tok is not None:
                losses["tokens"] = cfg.token_weight * tok_loss(s_tok, feats.tokens, student.grid())
            total_loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            total_loss.backward()  # type: ignore[union-attr]
            opt.step()
            sched.step()
            step += 1
            n += 1
            advance(1)
            if step == 2 or (step == 1 and total == 1):
                # The cost before the long part: time two batches (the first pays one-off warm-up), extrapolate.
                per_batch = (time.perf_counter() - t0) / step
                log(f"distillation: {total} batches ({cfg.epochs} epoch(s) x {len(loader)}); the first {step} took "
                    f"{per_batch:.2f} s each, so about {per_batch * total / 60:.1f} min on this machine "
                    f"({cfg.threads} thread(s)); --distill-epochs N changes it, --student none skips it")
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
        if n:
            row = {"epoch": float(epoch + 1), **{k: v / n for k, v in sums.items()}}
            history.append(row)
            log(f"distill epoch {epoch + 1}/{cfg.epochs}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()
                                                                     if k != "epoch"))
        if cfg.max_steps and step >= cfg.max_steps:
            break
    return step


@torch.no_grad()
def mean_cosine_to_teacher(teacher: nn.Module, student: nn.Module, images: torch.Tensor, student_size: int,
                           batch: int = 64) -> float:
    """Mean cosine between the student's and the teacher's embeddings of the same (eval-preprocessed) images."""
    teacher.eval()
    student.eval()
    sims = []
    for i in range(0, len(images), batch):
        x = images[i:i + batch]
        t = teacher.encode_image(x)
        s = student(_to_student_size(x, student_size))
        s = s[0] if isinstance(s, tuple) else s
        sims.append(F.cosine_similarity(s, t, dim=-1))
    return float(torch.cat(sims).mean()) if sims else float("nan")
