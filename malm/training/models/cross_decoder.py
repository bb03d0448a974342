"""TNLBT's cross decoder: fuse image tokens with recipe features, then generate the recipe title.

"Fusing before generating": a transformer encoder runs over the concatenation of the image tokens and the
recipe's component features (a learned type embedding tells the modalities apart), and a causal decoder
cross-attends to that fused memory to predict the title word by word (teacher forcing). The title's own
component vector is left out of the memory by default (`drop_title`); otherwise the decoder could copy it
and the auxiliary loss would shape nothing.
"""

from __future__ import annotations

import torch
from torch import nn

from malm.errors import MalmError
from malm.training.models.transformer import ResidualAttentionBlock as Block


class CrossDecoder(nn.Module):
    def __init__(
        self,
        image_width: int,
        recipe_width: int,
        vocab_size: int,
        max_len: int,
        dim: int = 256,
        fusion_depth: int = 1,
        decoder_depth: int = 2,
        heads: int = 4,
        pad_id: int = 0,
        drop_title: bool = True,
    ) -> None:
        super().__init__()
        if vocab_size < 4 or max_len < 2:
            raise MalmError(
                f"cross decoder needs vocab_size >= 4 and max_len >= 2, got {vocab_size}, {max_len}"
            )
        self.pad_id = pad_id
        self.drop_title = drop_title
        self.image_in = nn.Linear(image_width, dim)
        self.recipe_in = nn.Linear(recipe_width, dim)
        self.type_embed = nn.Parameter(torch.zeros(2, dim))
        self.fusion = nn.ModuleList(Block(dim, heads, cross=False) for _ in range(fusion_depth))
        self.fusion_norm = nn.LayerNorm(dim)
        self.word = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.pos = nn.Parameter(torch.zeros(1, max_len, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.trunc_normal_(self.type_embed, std=0.02)
        self.decoder = nn.ModuleList(Block(dim, heads, cross=True) for _ in range(decoder_depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)

    def fuse(
        self, image_tokens: torch.Tensor, recipe_tokens: torch.Tensor, recipe_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused memory [B, Pi+S, dim] and its validity mask."""
        recipe_mask = recipe_mask.bool()
        if self.drop_title:
            # Component 0 is the title vector (docs/architecture.md: tokens = title, ingredients, instructions).
            recipe_mask = recipe_mask.clone()
            recipe_mask[:, 0] = False
        img = self.image_in(image_tokens) + self.type_embed[0]
        rec = self.recipe_in(recipe_tokens) + self.type_embed[1]
        x = torch.cat([img, rec], dim=1)
        img_valid = torch.ones(img.shape[:2], dtype=torch.bool, device=img.device)
        mask = torch.cat([img_valid, recipe_mask], dim=1)
        for block in self.fusion:
            x = block(x, mask)[0]
        return self.fusion_norm(x), mask

    def forward(
        self,
        image_tokens: torch.Tensor,
        recipe_tokens: torch.Tensor,
        recipe_mask: torch.Tensor,
        title: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: `title` [B, T] (`<start> w… <end> <pad>…`) → (logits [B, T-1, V] for
        positions 1…T-1, targets [B, T-1])."""
        if title.dim() != 2 or title.shape[1] < 2 or title.shape[1] > self.pos.shape[1]:
            raise MalmError(
                f"title tokens must be [B, T] with 2 <= T <= {self.pos.shape[1]}, got {tuple(title.shape)}"
            )
        memory, memory_mask = self.fuse(image_tokens, recipe_tokens, recipe_mask)
        inputs, targets = title[:, :-1].long(), title[:, 1:].long()
        x = self.word(inputs) + self.pos[:, : inputs.shape[1]]
        input_mask = inputs != self.pad_id
        for block in self.decoder:
            x = block(x, input_mask, memory, memory_mask, causal=True)[0]
        return self.head(self.norm(x)), targets
