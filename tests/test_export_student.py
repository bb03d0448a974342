"""The EfficientNet-Lite0 student: weights load strictly, TF SAME padding, shapes; the distillation losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from malm.export.losses import EmbeddingCosineLoss, RelationalRankingLoss, TokenCosineLoss
from malm.export.losses.token_cosine import pool_tokens
from malm.export.student import StudentConfig, StudentImageEncoder
from malm.training.models.efficientnet_lite import (
    EfficientNetLite0,
    SameConv2d,
    imagenet_weights_path,
    load_imagenet_weights,
)


def test_imagenet_weights_load_into_our_architecture() -> None:
    state = torch.load(imagenet_weights_path(), map_location="cpu", weights_only=True)
    backbone = EfficientNetLite0()
    load_imagenet_weights(backbone)  # strict apart from the dropped classifier
    ours = backbone.state_dict()
    assert set(ours) == {k for k in state if not k.startswith("_fc.")}
    assert torch.equal(ours["_blocks.12._depthwise_conv.weight"], state["_blocks.12._depthwise_conv.weight"])
    assert sum(p.numel() for p in backbone.parameters()) == 3_371_008  # Lite0 without its 1000-way head


def test_same_padding_matches_tensorflow_rule() -> None:
    torch.manual_seed(0)
    conv = SameConv2d(3, 4, 3, stride=2, bias=False)
    for size in (32, 33):
        x = torch.randn(1, 3, size, size)
        pad = max((math.ceil(size / 2) - 1) * 2 + 3 - size, 0)  # TF: total pad, the extra pixel on the right/bottom
        ref = F.conv2d(F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2)), conv.weight, stride=2)
        assert torch.allclose(conv(x), ref)
        assert conv(x).shape[-1] == math.ceil(size / 2)


def test_student_outputs_normalized_embedding_and_grid_tokens() -> None:
    torch.manual_seed(0)
    student = StudentImageEncoder(StudentConfig(embed_dim=24, token_dim=8, image_size=64), pretrained=False).eval()
    emb, tokens = student.features(torch.randn(3, 3, 64, 64))
    assert emb.shape == (3, 24) and torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert tokens is not None and tokens.shape == (3, 4, 8) and student.grid() == (2, 2)
    assert student(torch.randn(2, 3, 64, 64)).shape == (2, 24)
    odd = StudentImageEncoder(StudentConfig(embed_dim=8, token_dim=4, image_size=48), pretrained=False).eval()
    assert odd.features(torch.randn(1, 3, 48, 48))[1].shape == (1, 4, 4) and odd.grid() == (2, 2)


def test_student_config_is_validated() -> None:
    with pytest.raises(ValueError, match=">= 32"):
        StudentConfig(embed_dim=8, image_size=16)
    with pytest.raises(ValueError, match="embed_dim"):
        StudentConfig(embed_dim=0)
    cfg = StudentConfig(embed_dim=8, token_dim=4, image_size=96)
    assert StudentConfig.from_dict(cfg.to_dict()) == cfg


def test_input_affine_maps_deployment_normalization_to_lite_scaling() -> None:
    cfg = StudentConfig(embed_dim=8, image_size=32)
    student = StudentImageEncoder(cfg, pretrained=False)
    pixels = torch.rand(1, 3, 4, 4)  # 0..1
    deploy = (pixels - torch.tensor(cfg.mean).view(1, 3, 1, 1)) / torch.tensor(cfg.std).view(1, 3, 1, 1)
    lite = (pixels * 255 - 127) / 128
    assert torch.allclose(deploy * student.in_scale + student.in_shift, lite, atol=1e-5)


def test_embedding_cosine_loss_matches_reference() -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(5, 7, generator=g, requires_grad=True)
    t = torch.randn(5, 7, generator=g)
    loss = EmbeddingCosineLoss()(s, t)
    sd = s.detach()
    ref = sum(1 - float(sd[i] @ t[i] / (sd[i].norm() * t[i].norm())) for i in range(5)) / 5
    assert loss.item() == pytest.approx(ref, abs=1e-6)
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    assert EmbeddingCosineLoss()(t, t).item() == pytest.approx(0.0, abs=1e-6)


def test_relational_loss_matches_reference_and_is_zero_for_equal_rankings() -> None:
    g = torch.Generator().manual_seed(1)
    s = F.normalize(torch.randn(4, 6, generator=g), dim=-1).requires_grad_(True)
    t = F.normalize(torch.randn(4, 6, generator=g), dim=-1)
    r = F.normalize(torch.randn(9, 6, generator=g), dim=-1)
    temp = 0.1
    loss = RelationalRankingLoss(temp)(s, t, r)
    p = torch.softmax(t @ r.T / temp, -1)
    q = torch.softmax(s @ r.T / temp, -1)
    ref = (p * (p.log() - q.log())).sum(-1).mean() * temp**2
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert RelationalRankingLoss(temp)(t, t, r).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError):
        RelationalRankingLoss(0.0)


def test_token_loss_pools_teacher_patches_onto_student_grid() -> None:
    g = torch.Generator().manual_seed(2)
    teacher = torch.randn(2, 16, 5, generator=g)  # 4x4 patches
    pooled = pool_tokens(teacher, (2, 2))
    # top-left student cell = mean of patches (0,0), (0,1), (1,0), (1,1) of the 4x4 grid
    assert torch.allclose(pooled[:, 0], teacher[:, [0, 1, 4, 5]].mean(1), atol=1e-6)
    assert TokenCosineLoss()(pooled.clone(), teacher, (2, 2)).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(2, 4, 5, generator=g, requires_grad=True)
    loss = TokenCosineLoss()(student, teacher, (2, 2))
    ref = (1 - F.cosine_similarity(student, pooled, dim=-1)).mean()
    assert loss.item() == pytest.approx(ref.item(), abs=1e-6)
    with pytest.raises(ValueError, match="square"):
        pool_tokens(torch.randn(1, 6, 3), (2, 2))
