"""The one transformer block of every tower: the ViT, the recipe encoder, the matching / cross / distillation
decoders (open_clip's `ResidualAttentionBlock` habit: a new attention trick lands once).

Pre-norm, timm names (`norm1`, `attn.qkv`, `attn.proj`, `norm2`, `mlp.fc1`, `mlp.fc2`), so timm ViT weights
load unchanged. Attention runs `F.scaled_dot_product_attention` (flash / memory-efficient kernels on a GPU);
only a caller that needs the attention weights (MALM's local matching reads the last decoder layer's) gets
the explicit softmax, written with MatMul/Softmax so it exports to ONNX as before.

Checkpoints written before this module used `nn.TransformerEncoderLayer` names in the recipe encoder and
separate q/k/v/out projections in the decoders; `legacy_block_keys` maps them on load (a state-dict
pre-hook), so those weights still load.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from malm.errors import MalmError


class QuickGELU(nn.Module):
    # OpenAI CLIP's activation; its weights are trained with it.
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample during training."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Attention(nn.Module):
    """Multi-head attention with one packed `qkv` projection. `memory` (cross-attention) takes the keys and
    values from another sequence; `key_mask` [B, S] True = attend; `causal` masks future keys.
    Returns (output, weights [B, H, Q, S] when `need_weights`, else None)."""

    def __init__(self, dim: int, heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise MalmError(f"attention width {dim} is not divisible by heads {heads}")
        self.heads, self.dim, self.attn_drop = heads, dim, attn_drop
        self.scale = 1.0 / math.sqrt(dim // heads)  # a Python float, so ONNX tracing keeps it constant
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    # The three projections on their own (tests, and cross-attention where queries and keys differ).
    def q(self, x: Tensor) -> Tensor:
        return F.linear(x, self.qkv.weight[: self.dim], self.qkv.bias[: self.dim])

    def k(self, x: Tensor) -> Tensor:
        return F.linear(x, self.qkv.weight[self.dim : 2 * self.dim], self.qkv.bias[self.dim : 2 * self.dim])

    def v(self, x: Tensor) -> Tensor:
        return F.linear(x, self.qkv.weight[2 * self.dim :], self.qkv.bias[2 * self.dim :])

    @property
    def out(self) -> nn.Linear:
        return self.proj

    def _heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.dim // self.heads).transpose(1, 2)

    def forward(self, x: Tensor, memory: Tensor | None = None, key_mask: Tensor | None = None, causal: bool = False,
                need_weights: bool = True) -> tuple[Tensor, Tensor | None]:
        b, q_len, d = x.shape
        if memory is None:
            q, k, v = self._heads_packed(x)
        else:
            q = self._heads(self.q(x))
            kv = F.linear(memory, self.qkv.weight[d:], self.qkv.bias[d:])
            k, v = self._heads(kv[..., :d]), self._heads(kv[..., d:])
        drop = self.attn_drop if self.training else 0.0
        if need_weights:
            out, weights = self._explicit(q, k, v, key_mask, causal, drop)
        else:
            mask = None if key_mask is None else key_mask[:, None, None, :]
            if causal:
                future = torch.ones(q_len, k.shape[2], dtype=torch.bool, device=x.device).tril()
                mask = future if mask is None else mask & future
            out, weights = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop), None
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, q_len, d))), weights

    def _heads_packed(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def _explicit(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None, causal: bool,
                  drop: float) -> tuple[Tensor, Tensor]:
        scores = (q @ k.transpose(-2, -1)) * self.scale
        # A large finite negative (not -inf) keeps rows finite even if every key were masked.
        neg = torch.finfo(scores.dtype).min
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None, None, :], neg)
        if causal:
            future = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).triu(1)
            scores = scores.masked_fill(future, neg)
        weights = scores.softmax(dim=-1)
        return (F.dropout(weights, drop) if drop > 0 else weights) @ v, weights


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int, act: str = "gelu", hidden_drop: float = 0.0, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = QuickGELU() if act == "quick_gelu" else nn.GELU()
        self.hidden_drop = nn.Dropout(hidden_drop)
        self.fc2 = nn.Linear(hidden, width)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.hidden_drop(self.act(self.fc1(x)))))


class ResidualAttentionBlock(nn.Module):
    """x + attn(norm1(x)) [+ cross_attn(norm_q(x), norm_mem(memory))] + mlp(norm2(x)), each branch through
    drop path. `dropout` sets the output dropouts of attention and MLP; `attn_drop` and `mlp_hidden_drop`
    the dropout of attention weights and of the MLP's hidden layer (nn.TransformerEncoderLayer's places)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, *, cross: bool = False, act: str = "gelu",
                 eps: float = 1e-5, dropout: float = 0.0, attn_drop: float = 0.0, mlp_hidden_drop: float = 0.0,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads, attn_drop, dropout)
        self.cross = cross
        if cross:
            self.norm_q = nn.LayerNorm(dim, eps=eps)
            self.norm_mem = nn.LayerNorm(dim, eps=eps)
            self.cross_attn = Attention(dim, heads, attn_drop, dropout)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act, mlp_hidden_drop, dropout)
        self.drop_path = DropPath(drop_path)
        self._register_load_state_dict_pre_hook(_legacy_block_hook)

    def forward(self, x: Tensor, x_mask: Tensor | None = None, memory: Tensor | None = None,
                memory_mask: Tensor | None = None, causal: bool = False,
                need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """-> (x, the cross-attention weights [B, H, Q, S] when `need_weights`, else None)."""
        x = x + self.drop_path(self.attn(self.norm1(x), None, x_mask, causal, need_weights=False)[0])
        weights = None
        if self.cross:
            if memory is None:
                raise MalmError("a cross-attention block needs a memory")
            out, weights = self.cross_attn(self.norm_q(x), self.norm_mem(memory), memory_mask, need_weights=need_weights)
            x = x + self.drop_path(out)
        return x + self.drop_path(self.mlp(self.norm2(x))), weights


# ------------------------------------------------------------------------------------ older checkpoints

# Decoder blocks before the shared block: separate q/k/v/out projections, other norm and MLP names.
_OLD_BLOCK = {"norm_self.": "norm1.", "norm_mlp.": "norm2.", "mlp.0.": "mlp.fc1.", "mlp.2.": "mlp.fc2.",
              "self_attn.out.": "attn.proj.", "cross_attn.out.": "cross_attn.proj."}
# nn.TransformerEncoderLayer (the recipe encoder before the shared block), relative to one layer.
_OLD_ENCODER_LAYER = {"self_attn.in_proj_weight": "attn.qkv.weight", "self_attn.in_proj_bias": "attn.qkv.bias",
                      "self_attn.out_proj.": "attn.proj.", "linear1.": "mlp.fc1.", "linear2.": "mlp.fc2.",
                      "norm1.": "norm1.", "norm2.": "norm2."}


def _legacy_block_hook(state: dict[str, Any], prefix: str, *_: Any) -> None:
    """Rename a pre-shared-block decoder block's keys under `prefix` in place (q, k, v packed into qkv)."""
    for attn in ("self_attn", "cross_attn"):
        for kind in ("weight", "bias"):
            parts = [f"{prefix}{attn}.{p}.{kind}" for p in "qkv"]
            if all(p in state for p in parts):
                new = "attn" if attn == "self_attn" else "cross_attn"
                state[f"{prefix}{new}.qkv.{kind}"] = torch.cat([state.pop(p) for p in parts], dim=0)
    for key in [k for k in state if k.startswith(prefix)]:
        rest = key[len(prefix):]
        for old, new in _OLD_BLOCK.items():
            if rest.startswith(old):
                state[prefix + new + rest[len(old):]] = state.pop(key)
                break


def legacy_encoder_hook(state: dict[str, Any], prefix: str, *_: Any) -> None:
    """Rename `nn.TransformerEncoder` keys under `prefix` (`encoder.layers.i.*`, `encoder.norm.*`) in place."""
    for key in [k for k in state if k.startswith(prefix + "encoder.")]:
        rest = key[len(prefix) + len("encoder."):]
        if rest.startswith("norm."):
            state[prefix + rest] = state.pop(key)
            continue
        m = re.fullmatch(r"layers\.(\d+)\.(.+)", rest)
        if m is None:
            continue
        for old, new in _OLD_ENCODER_LAYER.items():
            if m.group(2).startswith(old):
                state[f"{prefix}blocks.{m.group(1)}.{new}{m.group(2)[len(old):]}"] = state.pop(key)
                break
