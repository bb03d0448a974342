"""The hybrid ViT: ImageNet EfficientNet-Lite0 stages as the patch stem, ViT blocks and MALM masking on top."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from malm.export.student import StudentConfig, StudentImageEncoder
from malm.training.config import ConfigError, ImageEncoderConfig, load_preset
from malm.training.lite0_stages import lite0_blocks, lite0_stem_stride
from malm.training.models import hybrid
from malm.training.models.efficientnet_lite import EfficientNetLite0, load_imagenet_weights
from malm.training.models.hybrid import HybridViT, build_image_encoder, load_stem_weights
from malm.training.models.vit import VisionTransformer, random_keep_idx
from malm.training.task import Task

HYB = dict(backbone="hybrid_effnet_lite0", image_size=64, patch_size=16, stem_stages=4, width=32, depth=1, heads=2,
           mlp_ratio=2.0, drop_path=0.0)


def _encoder(**kw: object) -> HybridViT:
    torch.manual_seed(0)
    enc = build_image_encoder(ImageEncoderConfig(**{**HYB, **kw}))  # type: ignore[arg-type]
    assert isinstance(enc, HybridViT)
    return enc


def test_stem_stride_of_the_stage_table() -> None:
    assert lite0_stem_stride(4) == 16 and lite0_stem_stride(3) == 8 and lite0_blocks(4) == 8


def test_config_rejects_a_patch_size_that_is_not_the_stem_stride() -> None:
    with pytest.raises(ConfigError, match="set patch_size to 16"):
        ImageEncoderConfig(**{**HYB, "patch_size": 8})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="backbone"):
        ImageEncoderConfig(backbone="resnet")
    with pytest.raises(ConfigError, match="stem_stages"):
        ImageEncoderConfig(**{**HYB, "stem_stages": 9})  # type: ignore[arg-type]
    assert isinstance(build_image_encoder(ImageEncoderConfig(image_size=32, patch_size=8, width=32, depth=1,
                                                             heads=2)), VisionTransformer)


def test_stem_is_the_imagenet_network_on_imagenet_normalized_input() -> None:
    """After load_stem_weights, the stem's feature map is Lite0's own (first 4 stages) on the same pixels."""
    enc = _encoder()
    assert load_stem_weights(enc) > 0
    full = EfficientNetLite0().eval()
    load_imagenet_weights(full)
    student = StudentImageEncoder(StudentConfig(embed_dim=8, image_size=64), pretrained=False)  # for in_scale
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y = torch.nn.functional.relu6(full._bn0(full._conv_stem(x * student.in_scale + student.in_shift)))
        for block in full._blocks[: lite0_blocks(4)]:
            y = block(y)
        ours = enc.eval().patch_embed.cnn(x)
    assert ours.shape == (2, 80, 4, 4)
    torch.testing.assert_close(ours, y)


def test_shapes_masking_and_frozen_stem_gradients() -> None:
    enc = _encoder()
    load_stem_weights(enc)
    enc.train()
    # A frozen stem keeps ImageNet BatchNorm statistics even in train mode.
    assert all(not m.training for m in enc.patch_embed.modules() if isinstance(m, torch.nn.BatchNorm2d))
    x = torch.randn(3, 3, 64, 64)
    full = enc(x)
    assert full.cls.shape == (3, 32) and full.tokens.shape == (3, 16, 32)
    keep = random_keep_idx(3, enc.num_patches, 0.75)
    masked = enc(x, keep)
    assert masked.tokens.shape == (3, 4, 32)
    assert enc.fill_masked(masked.tokens, keep).shape == (3, 16, 32)
    (masked.cls.sum() + full.cls.sum()).backward()
    assert all(p.grad is None for p in enc.stem_parameters())
    assert enc.patch_embed.proj.weight.grad is not None and enc.blocks[0].attn.qkv.weight.grad is not None


def test_finetuned_stem_trains_at_its_own_learning_rate() -> None:
    cfg = load_preset("malm-hybrid-tiny").with_overrides(
        {"model.image.freeze_stem": False, "train.stem_lr": 5e-5, "model.image.image_size": 64})
    task = Task(cfg, vocab_size=30)
    groups = {g["kind"]: g for g in task.param_groups(cfg.train)}
    assert groups["stem"]["base_lr"] == 5e-5 and groups["image"]["base_lr"] == cfg.train.image_lr
    stem_ids = {id(p) for p in task.model.image_stem_parameters()}
    assert stem_ids and stem_ids <= {id(p) for g in task.param_groups(cfg.train) if g["kind"] == "stem"
                                     for p in g["params"]}
    enc = task.model.image_encoder
    enc.train()
    assert any(m.training for m in enc.patch_embed.modules() if isinstance(m, torch.nn.BatchNorm2d))
    enc(torch.randn(2, 3, 64, 64)).cls.sum().backward()
    assert all(p.grad is not None for p in task.model.image_stem_parameters())


def test_frozen_stem_runs_once_per_batch_for_the_student_and_its_ema_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    enc = _encoder()
    load_stem_weights(enc)
    twin = _encoder()
    twin.load_state_dict(enc.state_dict())  # the EMA teacher: same weights, another module
    other = _encoder()  # random stem: a different network
    calls: list[int] = []
    real = hybrid.EffNetLite0Stem.cnn
    monkeypatch.setattr(hybrid.EffNetLite0Stem, "cnn", lambda self, x: calls.append(1) or real(self, x))
    x = torch.randn(2, 3, 64, 64)
    a = enc(x).tokens
    b = enc(x, random_keep_idx(2, 16, 0.5)).tokens
    c = twin(x).tokens
    assert len(calls) == 1 and b.shape[1] == 8
    torch.testing.assert_close(a, c)
    other(x)
    assert len(calls) == 2  # different weights: computed again
    x.mul_(2.0)  # the same tensor, changed in place: computed again
    enc(x)
    assert len(calls) == 3


def test_hybrid_presets_exist_for_every_method() -> None:
    for method in ("ht", "tnlbt", "malm"):
        cfg = load_preset(f"{method}-hybrid-tiny")
        assert cfg.model.image.backbone == "hybrid_effnet_lite0" and cfg.model.image.freeze_stem
        assert cfg.preprocess().mean == (0.485, 0.456, 0.406)  # ImageNet normalisation, as the stem needs
        assert cfg.preprocess().size == cfg.model.image.image_size
    assert load_preset("malm").model.image.backbone == "vit"  # the full presets keep ViT-B/16


def test_train_and_export_a_hybrid_teacher_through_the_cli(tmp_path: Path, make_dataset: Callable[..., Path],
                                                            tiny_config: Callable[..., Path]) -> None:
    """`malm train` with a hybrid config, then `malm export` distils the EfficientNet-Lite0 student from it."""
    data = make_dataset(tmp_path / "data", n_train=16, n_val=4, n_test=8)
    cfg_path = tiny_config(tmp_path / "c.json", epochs=1)
    d = json.loads(cfg_path.read_text())
    d["model"]["image"].update({"backbone": "hybrid_effnet_lite0", "image_size": 32, "patch_size": 16,
                                "stem_stages": 4})
    d["loss"]["mask"] = {"enabled": True, "ratio": 0.5, "full_image_retrieval": True}
    d["loss"]["self_distill"] = {"weight": 1.0, "ema_decay": 0.9, "predictor_layers": 1}
    cfg_path.write_text(json.dumps(d))
    run = tmp_path / "run"

    def malm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "malm.cli", *args], capture_output=True, text=True, timeout=600)

    res = malm("train", "--data", str(data), "--preset", str(cfg_path), "--out", str(run), "--no-progress")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "image stem: ImageNet EfficientNet-Lite0" in res.stderr
    bundle = tmp_path / "bundle"
    res = malm("export", "--checkpoint", str(run), "--target", "onnx", "--data", str(data), "--bundle", str(bundle),
               "--distill-epochs", "1")
    assert res.returncode == 0, res.stderr[-2000:]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["model"]["config"]["model"]["image"]["backbone"] == "hybrid_effnet_lite0"
    assert manifest["preprocess"]["size"] == 32 and manifest["preprocess"]["mean"] == [0.485, 0.456, 0.406]
    assert "image_fp32" in manifest["encoders"] and manifest["student"]["arch"] == "efficientnet-lite0"
    # The hybrid is small enough to ship itself (`--student none`): fp32 is exact; its int8 models quantize
    # the transformer's linear layers only (the stem in int8 costs too much, docs/ablation.md) and pass the gate.
    own = tmp_path / "bundle-own"
    res = malm("export", "--checkpoint", str(run), "--target", "onnx", "--student", "none", "--data", str(data),
               "--bundle", str(own), "--int8")
    assert res.returncode == 0, res.stderr[-2000:]
    manifest = json.loads((own / "manifest.json").read_text())
    assert {"image_fp32", "image_int8", "image_int8_cpu"} <= set(manifest["encoders"]) and "student" not in manifest
    assert "linear layers only" in manifest["encoders"]["image_int8"]["quantization"]["scope"]
    report = json.loads((own / "report.json").read_text())["variants"]
    assert report["image_fp32"]["cosine_to_teacher"] > 0.999, report  # the ONNX graph is the teacher (no memo)
    assert report["image_int8"]["cosine_to_fp32"] >= 0.98, report
    import onnx

    graph = onnx.load(str(own / "encoders" / "image_int8.onnx")).graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    linears = [n for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in dequantized]
    assert convs and not any(i in dequantized for n in convs for i in n.input)  # the stem stays float
    assert linears  # the transformer's linear layers are int8
