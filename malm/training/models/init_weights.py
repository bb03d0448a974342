"""Initialize the ViT image encoder from a local pretrained checkpoint (timm or open_clip naming).

    malm train ... --image-init vit_base_patch16_clip_224.safetensors

Accepted layouts (prefixes `module.`, `visual.`, `image_encoder.`, `model.` are stripped):
- timm `VisionTransformer`: our own names (`patch_embed.proj`, `cls_token`, `pos_embed`, `blocks.i.*`, `norm`,
  `norm_pre`); separate `attn.q_proj/k_proj/v_proj` are merged into `attn.qkv`.
- open_clip / OpenAI CLIP `visual.*`: `conv1`, `class_embedding`, `positional_embedding`, `ln_pre`,
  `transformer.resblocks.i.{ln_1,attn.in_proj_*,attn.out_proj,ln_2,mlp.c_fc,mlp.c_proj}`, `ln_post`.
A position embedding for another grid is resized bicubically. Heads (`head.*`, `proj`, …) are unused.
Only safetensors files are read (never pickles).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from malm.errors import MalmError
from malm.training.models.vit import VisionTransformer

_PREFIXES = ("module.", "visual.", "image_encoder.", "model.", "vision_model.")

_OPENCLIP_BLOCK = {
    "ln_1": "norm1",
    "ln_2": "norm2",
    "attn.in_proj_weight": "attn.qkv.weight",
    "attn.in_proj_bias": "attn.qkv.bias",
    "attn.out_proj": "attn.proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_OPENCLIP_TOP = {
    "conv1.weight": "patch_embed.proj.weight",
    "conv1.bias": "patch_embed.proj.bias",
    "ln_pre.weight": "norm_pre.weight",
    "ln_pre.bias": "norm_pre.bias",
    "ln_post.weight": "norm.weight",
    "ln_post.bias": "norm.bias",
}


@dataclass
class InitReport:
    loaded: list[str] = field(default_factory=list)  # our parameter names that were set
    missing: list[str] = field(default_factory=list)  # our parameters the file did not provide (kept at init)
    unexpected: list[str] = field(default_factory=list)  # source keys we did not use
    notes: list[str] = field(default_factory=list)  # e.g. "pos_embed resized 14x14 -> 4x4"

    def summary(self) -> str:
        parts = [f"loaded {len(self.loaded)} tensors"]
        if self.missing:
            parts.append(f"kept at init: {', '.join(self.missing)}")
        if self.unexpected:
            shown = ", ".join(self.unexpected[:8]) + (" …" if len(self.unexpected) > 8 else "")
            parts.append(f"unused from file: {shown}")
        return "; ".join(parts + self.notes)


def map_keys(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Source state dict -> our names; returns (mapped, unused source keys)."""
    mapped: dict[str, Tensor] = {}
    unused: list[str] = []
    pending_qkv: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        k = key
        stripped = True
        while stripped:
            stripped = False
            for p in _PREFIXES:
                if k.startswith(p):
                    k, stripped = k[len(p):], True
        if k in _OPENCLIP_TOP:
            mapped[_OPENCLIP_TOP[k]] = value
            continue
        if k == "class_embedding":
            mapped["cls_token"] = value.reshape(1, 1, -1)
            continue
        if k == "positional_embedding":
            mapped["pos_embed"] = value.reshape(1, value.shape[-2], value.shape[-1])
            continue
        m = re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)", k)
        if m:
            rest = m.group(2)
            for src, dst in _OPENCLIP_BLOCK.items():
                if rest == src or rest.startswith(src + "."):
                    mapped[f"blocks.{m.group(1)}.{dst}{rest[len(src):]}"] = value
                    break
            else:
                unused.append(key)
            continue
        m = re.fullmatch(r"(blocks\.\d+\.attn)\.([qkv])_proj\.(weight|bias)", k)
        if m:
            pending_qkv.setdefault(f"{m.group(1)}.qkv.{m.group(3)}", {})[m.group(2)] = value
            continue
        if k in ("cls_token", "pos_embed", "mask_token", "norm.weight", "norm.bias") or k.startswith(
            ("patch_embed.", "blocks.", "norm_pre.")
        ):
            mapped[k] = value
            continue
        unused.append(key)
    for name, parts in pending_qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise MalmError(f"image init: {name} has only {sorted(parts)} of q/k/v projections")
        mapped[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return mapped, unused


def resize_pos_embed(pos: Tensor, num_patches: int) -> Tensor:
    """[1, 1+G*G, W] -> [1, 1+P, W]: keep the [CLS] position, resize the grid bicubically."""
    cls, grid = pos[:, :1], pos[:, 1:]
    old, new = int(math.isqrt(grid.shape[1])), int(math.isqrt(num_patches))
    if old * old != grid.shape[1] or new * new != num_patches:
        raise MalmError(f"image init: cannot resize a non-square position grid ({grid.shape[1]} -> {num_patches})")
    g = grid.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    g = F.interpolate(g, size=(new, new), mode="bicubic", align_corners=False)
    return torch.cat([cls, g.permute(0, 2, 3, 1).reshape(1, new * new, -1).to(pos.dtype)], dim=1)


def load_state_into(encoder: VisionTransformer, state: dict[str, Tensor], source: str = "state dict") -> InitReport:
    mapped, unused = map_keys(state)
    own = encoder.state_dict()
    report = InitReport(unexpected=list(unused))
    if "pos_embed" in mapped and mapped["pos_embed"].shape != own["pos_embed"].shape:
        before = mapped["pos_embed"].shape[1] - 1
        mapped["pos_embed"] = resize_pos_embed(mapped["pos_embed"], encoder.num_patches)
        report.notes.append(f"pos_embed resized {math.isqrt(before)}² -> {math.isqrt(encoder.num_patches)}² patches")
    bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in mapped.items() if k in own and v.shape != own[k].shape]
    if bad:
        raise MalmError(f"image init {source}: shapes do not match this model.image config "
                        f"({'; '.join(bad[:5])}); set model.image width/depth/heads/patch_size to the checkpoint's")
    for k in sorted(mapped):
        if k not in own:
            report.unexpected.append(k)
    new_state = dict(own)
    for k, v in mapped.items():
        if k in own:
            new_state[k] = v.to(own[k].dtype)
            report.loaded.append(k)
    if "patch_embed.proj.weight" in mapped and "patch_embed.proj.bias" not in mapped:
        # CLIP's conv1 has no bias: a zero bias makes ours compute the same function.
        new_state["patch_embed.proj.bias"] = torch.zeros_like(own["patch_embed.proj.bias"])
        report.loaded.append("patch_embed.proj.bias")
        report.notes.append("patch_embed bias set to zero (source has none)")
    report.missing = sorted(k for k in own if k not in report.loaded)
    if not report.loaded:
        raise MalmError(f"image init {source}: no ViT weights recognized (keys like {list(state)[:5]}); "
                        "expected timm or open_clip ViT naming")
    encoder.load_state_dict(new_state)
    return report


def load_image_init(encoder: VisionTransformer, path: str | Path) -> InitReport:
    """Load a `.safetensors` ViT checkpoint into `encoder`; raises MalmError naming the file on any mismatch."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise MalmError(f"--image-init {path}: only .safetensors files are read (no pickles); "
                        "convert with safetensors.torch.save_file(state_dict, 'x.safetensors')")
    if not path.is_file():
        raise MalmError(f"--image-init {path}: file not found")
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise MalmError(f"--image-init {path}: not a readable safetensors file ({e})") from e
    return load_state_into(encoder, state, str(path))
