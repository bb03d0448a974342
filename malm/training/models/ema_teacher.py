"""MALM's masked self-distillation parts: an EMA teacher image encoder and a masked-patch predictor.

The teacher is a frozen deep copy of the student image encoder; it sees the full image, runs in eval
mode without gradients, and moves only by `update()` (an exponential moving average of the student's
weights) after each optimizer step. The predictor is a small transformer over the student's
mask-token-filled sequence that predicts the teacher's (normalized) features at the masked patches.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from malm.errors import MalmError
from malm.training.models.transformer import ResidualAttentionBlock as Block


class EMATeacher(nn.Module):
    def __init__(self, student: nn.Module, decay: float = 0.999) -> None:
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise MalmError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.encoder = copy.deepcopy(student)
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True) -> EMATeacher:
        # The teacher stays in eval mode whatever the task's mode (open_clip's distill task does the same).
        super().train(mode)
        self.encoder.eval()
        return self

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """teacher ← decay · teacher + (1 − decay) · student, parameter by parameter; buffers are copied."""
        t_params = dict(self.encoder.named_parameters())
        s_params = dict(student.named_parameters())
        if t_params.keys() != s_params.keys():
            raise MalmError("EMA teacher and student have different parameters (was the student wrapped?)")
        for name, t in t_params.items():
            t.lerp_(s_params[name].detach().to(t.dtype), 1.0 - self.decay)
        s_buffers = dict(student.named_buffers())
        for name, buf in self.encoder.named_buffers():
            buf.copy_(s_buffers[name])

    @torch.no_grad()
    def forward(self, *args: object, **kwargs: object) -> object:
        return self.encoder(*args, **kwargs)


class MaskedPredictor(nn.Module):
    """Predicts the teacher's patch features at the masked positions from the student's filled sequence.

    Input: [B, 1+P, Wi] ([CLS] + patches, mask tokens at masked positions). The predictor adds its own
    positional embedding so a mask token knows which patch it stands for (the student's mask token is
    one shared vector).
    """

    def __init__(
        self, in_width: int, out_width: int, num_tokens: int, width: int = 256, depth: int = 2, heads: int = 4
    ) -> None:
        super().__init__()
        if depth < 1:
            raise MalmError(f"predictor depth must be >= 1, got {depth}")
        self.inp = nn.Linear(in_width, width)
        self.pos = nn.Parameter(torch.zeros(1, num_tokens, width))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(Block(width, heads, cross=False) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, out_width)

    def forward(self, tokens: torch.Tensor, mask_idx: torch.Tensor) -> torch.Tensor:
        """`tokens` [B, 1+P, Wi], `mask_idx` [B, M] patch indices (no [CLS]) → predictions [B, M, Wt]."""
        if tokens.shape[1] != self.pos.shape[1]:
            raise MalmError(f"predictor built for {self.pos.shape[1]} tokens, got {tokens.shape[1]}")
        x = self.inp(tokens) + self.pos
        for block in self.blocks:
            x = block(x)[0]
        x = self.out(self.norm(x))
        patches = x[:, 1:]
        return patches.gather(1, mask_idx.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))


def gather_patches(tokens: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows `idx` [B, M] of patch tokens [B, P, W] → [B, M, W]."""
    return tokens.gather(1, idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
