"""Hierarchical recipe encoder (H-T, Salvador et al. CVPR 2021).

Word level: one transformer for the title, one shared by every ingredient, one shared by every
instruction; each sentence is the mean of its valid token outputs. Component level: a transformer over
the ingredient sentence vectors and one over the instruction sentence vectors (padding masked), each
mean-pooled. The three vectors are concatenated and projected to the shared embedding.

With `sentence_features="minilm"` the word level is replaced by frozen MiniLM sentence vectors
(computed once, `minilm.py`): then `title` is float [B, Dm], `ingredients` [B, Ni, Dm] and
`instructions` [B, Ns, Dm], an all-zero row meaning "absent".

Token-level output (for local matching / cross decoders): the component sequence
[title vector, ingredient vectors, instruction vectors] with its validity mask.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from malm.training.config import RecipeEncoderConfig
from malm.training.models.transformer import ResidualAttentionBlock, legacy_encoder_hook

PAD_ID = 0  # malm.text.Vocabulary: <pad>=0
# Device types on which `_sentences` encodes only the non-empty ingredient / instruction rows, cropped to
# the batch's longest one: less compute, but the row selection reads the mask on the host. Elsewhere (CUDA)
# every row is encoded at full length: static shapes, no host sync per step, the same result per valid row.
GATHER_ROWS_ON = ("cpu",)


@dataclass
class RecipeFeatures:
    embedding: Tensor  # [B, D] projected (not normalized) recipe embedding
    tokens: Tensor  # [B, S, Wr] component-level sequence: title, ingredients, instructions (S = 1+Ni+Ns)
    token_mask: Tensor  # [B, S] True = valid
    title: Tensor  # [B, Wr] pooled title vector (for the recipe self-supervised loss)
    ingredients: Tensor  # [B, Wr] pooled ingredients vector
    instructions: Tensor  # [B, Wr] pooled instructions vector


@functools.lru_cache(maxsize=32)
def sinusoidal(length: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Fixed sine/cosine positions [length, width] (cached: recomputing them every step costs real time on CPU)."""
    pos = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, width, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / width))
    pe = torch.zeros(length, width, device=device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div[: width // 2])
    return pe.to(dtype)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over dim 1 of the valid positions; all-invalid rows give zeros."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


class SequenceEncoder(nn.Module):
    """Shared transformer blocks over a padded sequence, a final norm, and mean pooling of the valid outputs."""

    def __init__(self, cfg: RecipeEncoderConfig, layers: int, positional: bool) -> None:
        super().__init__()
        d = cfg.dropout  # in nn.TransformerEncoderLayer's places: attention weights, MLP hidden, both outputs
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(cfg.width, cfg.heads, cfg.mlp_ratio, dropout=d, attn_drop=d, mlp_hidden_drop=d)
            for _ in range(layers))
        self.norm = nn.LayerNorm(cfg.width)
        self.positional = positional
        # Runs written before the shared block used nn.TransformerEncoder names: they still load.
        self._register_load_state_dict_pre_hook(legacy_encoder_hook)

    def forward(self, x: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """x [N, L, W], valid [N, L] -> (outputs [N, L, W], pooled [N, W]). Rows must have >= 1 valid."""
        if self.positional:
            x = x + sinusoidal(x.shape[1], x.shape[2], x.device, x.dtype)
        for block in self.blocks:
            x = block(x, valid)[0]
        out = self.norm(x)
        return out, masked_mean(out, valid)


class HierarchicalRecipeEncoder(nn.Module):
    def __init__(self, cfg: RecipeEncoderConfig, vocab_size: int, embed_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        if cfg.sentence_features == "learned":
            self.word_embed = nn.Embedding(vocab_size, w, padding_idx=PAD_ID)
            # Unit-variance embeddings (nn.Embedding's default, as H-T): with std 0.02 the sinusoidal
            # positions (amplitude 1) drown the words and every recipe starts at the same embedding.
            nn.init.normal_(self.word_embed.weight, std=1.0)
            with torch.no_grad():
                self.word_embed.weight[PAD_ID].zero_()
            self.title_encoder = SequenceEncoder(cfg, cfg.word_layers, positional=True)
            self.ingredient_encoder = SequenceEncoder(cfg, cfg.word_layers, positional=True)
            self.instruction_encoder = SequenceEncoder(cfg, cfg.word_layers, positional=True)
        else:
            # Frozen sentence vectors -> recipe width; one adapter per component type.
            self.title_adapter = nn.Linear(cfg.minilm_dim, w)
            self.ingredient_adapter = nn.Linear(cfg.minilm_dim, w)
            self.instruction_adapter = nn.Linear(cfg.minilm_dim, w)
        # Ingredients are a set (no positions); instructions are ordered.
        self.ingredients_component = SequenceEncoder(cfg, cfg.component_layers, positional=False)
        self.instructions_component = SequenceEncoder(cfg, cfg.component_layers, positional=True)
        self.proj = nn.Linear(3 * w, embed_dim)

    @property
    def width(self) -> int:
        return self.cfg.width

    def _sentences(self, ids: Tensor, encoder: SequenceEncoder) -> tuple[Tensor, Tensor]:
        """ids [B, N, L] -> (sentence vectors [B, N, W], valid [B, N]); empty rows give zero vectors."""
        b, n, length = ids.shape
        flat = ids.reshape(b * n, length)
        tok_valid = flat != PAD_ID
        row_valid = tok_valid.any(1)
        if ids.device.type not in GATHER_ROWS_ON:
            # An empty row attends to its first slot (as _component does), then its output is dropped.
            safe = tok_valid.clone()
            safe[:, 0] |= ~row_valid
            _, pooled = encoder(self.word_embed(flat), safe)
            pooled = pooled.to(self.word_embed.weight.dtype)
            out = torch.where(row_valid.unsqueeze(1), pooled, torch.zeros((), dtype=pooled.dtype, device=ids.device))
            return out.reshape(b, n, -1), row_valid.reshape(b, n)
        out = torch.zeros(b * n, self.cfg.width, device=ids.device, dtype=self.word_embed.weight.dtype)
        rows = row_valid.nonzero().squeeze(1)
        if rows.numel():
            used = int(tok_valid.sum(1).max())  # crop trailing padding common to the batch
            sel, sel_valid = flat[rows, :used], tok_valid[rows, :used]
            _, pooled = encoder(self.word_embed(sel), sel_valid)
            out = out.index_copy(0, rows, pooled.to(out.dtype))
        return out.reshape(b, n, -1), row_valid.reshape(b, n)

    def _component(self, vecs: Tensor, valid: Tensor, encoder: SequenceEncoder) -> tuple[Tensor, Tensor]:
        # A recipe without any ingredient / instruction: attend to one (zero) slot, then zero its output.
        safe = valid.clone()
        safe[:, 0] |= ~valid.any(1)
        out, _ = encoder(vecs, safe)
        out = out * valid.unsqueeze(-1).to(out.dtype)
        return out, masked_mean(out, valid)

    def forward(self, title: Tensor, ingredients: Tensor, instructions: Tensor) -> RecipeFeatures:
        if self.cfg.sentence_features == "learned":
            t_valid = title != PAD_ID
            t_safe = t_valid.clone()
            t_safe[:, 0] |= ~t_valid.any(1)
            _, title_vec = self.title_encoder(self.word_embed(title), t_safe)
            ing_vecs, ing_valid = self._sentences(ingredients, self.ingredient_encoder)
            ins_vecs, ins_valid = self._sentences(instructions, self.instruction_encoder)
        else:
            title_vec = self.title_adapter(title)
            ing_valid = ingredients.abs().sum(-1) > 0
            ins_valid = instructions.abs().sum(-1) > 0
            ing_vecs = self.ingredient_adapter(ingredients) * ing_valid.unsqueeze(-1)
            ins_vecs = self.instruction_adapter(instructions) * ins_valid.unsqueeze(-1)
        ing_tokens, ing_vec = self._component(ing_vecs, ing_valid, self.ingredients_component)
        ins_tokens, ins_vec = self._component(ins_vecs, ins_valid, self.instructions_component)
        embedding = self.proj(torch.cat([title_vec, ing_vec, ins_vec], dim=1))
        tokens = torch.cat([title_vec.unsqueeze(1), ing_tokens, ins_tokens], dim=1)
        ones = torch.ones(title_vec.shape[0], 1, dtype=torch.bool, device=title_vec.device)
        token_mask = torch.cat([ones, ing_valid, ins_valid], dim=1)
        return RecipeFeatures(embedding, tokens, token_mask, title_vec, ing_vec, ins_vec)
