"""MALM's image-text matching module (training-only; exportable on its own for re-ranking).

Decoder ψ takes the image tokens ([CLS] + patches, mask tokens included) as queries over the recipe
tokens and gives the attended image features and the attention A [B, P, S] of each patch over the recipe
tokens. Decoder ψ′ takes the recipe tokens as queries over the attended image features and gives the
attended recipe features. The global pair is ([CLS] of the attended image features, mean of the attended
recipe features); the local pairs are (attended patch p, Σ_s A[p, s] · attended recipe feature s).

The paper describes a 1-layer decoder in its method section and 4 layers × 4 heads in its implementation
details, so depth and heads are arguments; the presets say which they pick.

With `itm_head=True` (loss.matching.mode "itm") a linear matched / not-matched head reads the fused global
pair (attended [CLS] ‖ mean attended recipe) and `score` is its matched probability -- what re-ranking uses.

The blocks are the shared `transformer.ResidualAttentionBlock`: SDPA everywhere except the last decoder
layer's cross-attention, whose weights the local loss reads (written out, so it exports to ONNX as plain
MatMul/Softmax).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from malm.errors import MalmError
from malm.training.models.transformer import Attention, ResidualAttentionBlock

__all__ = ["Attention", "Decoder", "LateInteraction", "MatchingModule", "MatchingOutput", "MatchingScorer",
           "export_matching_onnx"]


class Decoder(nn.Module):
    """A stack of cross-attention blocks; returns the output and the last layer's head-averaged
    cross-attention [B, Q, S] (the attention the local loss weights recipe features with)."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if depth < 1:
            raise MalmError(f"decoder depth must be >= 1, got {depth}")
        self.blocks = nn.ModuleList(ResidualAttentionBlock(dim, heads, mlp_ratio, cross=True) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(
        self,
        queries: torch.Tensor,
        memory: torch.Tensor,
        query_mask: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = queries
        weights: torch.Tensor | None = None
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            # Only the last layer's weights are used: every other layer runs SDPA's fused kernels.
            x, weights = block(x, query_mask, memory, memory_mask, need_weights=i == last)
        assert weights is not None
        return self.norm(x), weights.mean(dim=1)


@dataclass
class MatchingOutput:
    image: torch.Tensor  # [B, 1+P, D] attended image features ([CLS] first)
    recipe: torch.Tensor  # [B, S, D] attended recipe features
    attention: torch.Tensor  # [B, P, S] each patch's attention over the recipe tokens (rows sum to 1)
    recipe_mask: torch.Tensor  # [B, S] True = valid recipe token

    def global_pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        """([CLS] attended image feature [B, D], mean attended recipe feature over valid tokens [B, D])."""
        m = self.recipe_mask.to(self.recipe.dtype).unsqueeze(-1)
        mean = (self.recipe * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.image[:, 0], mean

    def local_pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(attended patches [B, P, D], each patch's attention-weighted recipe summary [B, P, D])."""
        return self.image[:, 1:], self.attention @ self.recipe


class LateInteraction(nn.Module):
    """Token-level late interaction (FILIP, Yao et al. 2021) between image patches and recipe tokens.

    Both sides are projected to `dim` and L2-normalized. The score of (image i, recipe j) is the mean of
    (each patch's best cosine over j's valid tokens, averaged over the patches) and (each valid recipe token's
    best cosine over i's patches, averaged over the tokens). Every pair's score comes from the two token sets
    alone -- no cross-attention -- so contrasting it over the batch cannot be met by copying the partner's
    content, and all B x C pairs cost one einsum.
    """

    def __init__(self, image_width: int, recipe_width: int, dim: int, temperature: float = 0.07) -> None:
        super().__init__()
        self.image_in = nn.Linear(image_width, dim)
        self.recipe_in = nn.Linear(recipe_width, dim)
        # The InfoNCE temperature is learned (as FILIP and CLIP do), from `temperature`; the score ignores it.
        self.log_inv_temperature = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    def inverse_temperature(self) -> torch.Tensor:
        return self.log_inv_temperature.clamp(max=math.log(100.0)).exp()

    @staticmethod
    def _reduce(sims: torch.Tensor, recipe_mask: torch.Tensor) -> torch.Tensor:
        """sims [..., P, S] and the matching recipe_mask [..., 1, S] -> the symmetric score [...]."""
        valid = recipe_mask.to(sims.dtype)
        image_side = sims.masked_fill(~recipe_mask, -2.0).amax(-1).mean(-1)  # cosines are >= -1
        recipe_side = (sims.amax(-2) * valid[..., 0, :]).sum(-1) / valid[..., 0, :].sum(-1).clamp_min(1.0)
        return 0.5 * (image_side + recipe_side)

    def _project(self, patches: torch.Tensor, recipe_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (F.normalize(self.image_in(patches).float(), dim=-1),
                F.normalize(self.recipe_in(recipe_tokens).float(), dim=-1))

    def all_pairs(self, patches: torch.Tensor, recipe_tokens: torch.Tensor, recipe_mask: torch.Tensor) -> torch.Tensor:
        """Scores [B, C] of every image (patches [B, P, Wi]) with every recipe ([C, S, Wr], mask [C, S])."""
        v, u = self._project(patches, recipe_tokens)
        return self._reduce(torch.einsum("bpd,csd->bcps", v, u), recipe_mask.bool()[None, :, None, :])

    def pair_scores(self, patches: torch.Tensor, recipe_tokens: torch.Tensor, recipe_mask: torch.Tensor) -> torch.Tensor:
        """Scores [N] of image n (patches [N, P, Wi]) with recipe n ([N, S, Wr], mask [N, S])."""
        v, u = self._project(patches, recipe_tokens)
        return self._reduce(torch.einsum("npd,nsd->nps", v, u), recipe_mask.bool()[:, None, :])


class MatchingModule(nn.Module):
    """ψ and ψ′ with input projections from the encoders' token widths to a shared width (and, with
    `late_dim`, the late-interaction local score)."""

    def __init__(
        self,
        image_width: int,
        recipe_width: int,
        dim: int = 256,
        depth: int = 1,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        itm_head: bool = False,
        late_dim: int = 0,
        late_temperature: float = 0.07,
    ) -> None:
        super().__init__()
        self.image_in = nn.Linear(image_width, dim)
        self.recipe_in = nn.Linear(recipe_width, dim)
        self.psi = Decoder(dim, depth, heads, mlp_ratio)
        self.psi_prime = Decoder(dim, depth, heads, mlp_ratio)
        # Logits (not matched, matched) of the fused global pair; None: the paper's cosine score only.
        self.itm = nn.Linear(2 * dim, 2) if itm_head else None
        # The token-level local score (loss.matching.local_score "late"); None: the decoder's local pairs.
        self.late = LateInteraction(image_width, recipe_width, late_dim, late_temperature) if late_dim > 0 else None

    def forward(
        self, image_tokens: torch.Tensor, recipe_tokens: torch.Tensor, recipe_mask: torch.Tensor
    ) -> MatchingOutput:
        if not torch.jit.is_tracing() and (
            image_tokens.dim() != 3
            or recipe_tokens.dim() != 3
            or recipe_mask.shape != recipe_tokens.shape[:2]
        ):
            raise MalmError(
                "matching expects image_tokens [B,1+P,Wi], recipe_tokens [B,S,Wr], recipe_mask [B,S]; got "
                f"{tuple(image_tokens.shape)}, {tuple(recipe_tokens.shape)}, {tuple(recipe_mask.shape)}"
            )
        recipe_mask = recipe_mask.bool()
        img = self.image_in(image_tokens)
        rec = self.recipe_in(recipe_tokens)
        attended_image, attn = self.psi(img, rec, memory_mask=recipe_mask)
        attended_recipe, _ = self.psi_prime(rec, attended_image, query_mask=recipe_mask)
        return MatchingOutput(attended_image, attended_recipe, attn[:, 1:], recipe_mask)

    def itm_logits(self, out: MatchingOutput) -> torch.Tensor:
        """[B, 2] (not matched, matched) logits of the decoded pairs."""
        if self.itm is None:
            raise MalmError("this matching module has no ITM head (loss.matching.mode 'paper')")
        g, h = out.global_pair()
        return self.itm(torch.cat([g, h], dim=-1))

    def score(
        self, image_tokens: torch.Tensor, recipe_tokens: torch.Tensor, recipe_mask: torch.Tensor
    ) -> torch.Tensor:
        """Pairwise matching score [B] of image b with recipe b; the SDK's optional re-ranking scores top-k
        candidates with it. With the late-interaction local score: that score (a cosine-like value in [-1, 1],
        over the patches, image_tokens[:, 1:]) -- the image-grounded score that trains well at small scale,
        where the ITM head can stay at chance (docs/ablation.md). Else with the ITM head: the probability that
        the pair matches; else (mode "paper"): the cosine of the global pair, what its InfoNCE trains."""
        if self.late is not None:
            return self.late.pair_scores(image_tokens[:, 1:], recipe_tokens, recipe_mask)
        out = self.forward(image_tokens, recipe_tokens, recipe_mask)
        if self.itm is not None:
            return torch.softmax(self.itm_logits(out).float(), dim=-1)[:, 1]
        g, h = out.global_pair()
        return (F.normalize(g, dim=-1) * F.normalize(h, dim=-1)).sum(-1)


GLOBAL_TOKENS = ("given", "mean")


class MatchingScorer(nn.Module):
    """`MatchingModule.score` as a module's forward, for ONNX export of the re-ranking head on its own.

    global_token="given": `image_tokens` are [CLS] + patches, as in training. "mean": `image_tokens` are
    patches only and their mean is put in front as the [CLS] -- for image encoders without a [CLS] (the
    edge student, whose tokens are distilled to the teacher's patch tokens, and the bundle's image ONNX,
    whose `tokens` output is patches only).
    """

    def __init__(self, matching: MatchingModule, global_token: str = "given") -> None:
        super().__init__()
        if global_token not in GLOBAL_TOKENS:
            raise MalmError(f"global_token must be one of {GLOBAL_TOKENS}, got {global_token!r}")
        self.matching = matching
        self.global_token = global_token

    def forward(
        self, image_tokens: torch.Tensor, recipe_tokens: torch.Tensor, recipe_mask: torch.Tensor
    ) -> torch.Tensor:
        if self.global_token == "mean":
            image_tokens = torch.cat([image_tokens.mean(dim=1, keepdim=True), image_tokens], dim=1)
        return self.matching.score(image_tokens, recipe_tokens, recipe_mask)


def export_matching_onnx(matching: MatchingModule, path: str, opset: int = 17, global_token: str = "given") -> None:
    """Write the re-ranking head alone: inputs `image_tokens` [N, P', Wi] float32 (P' = 1+P with
    global_token="given", P patches with "mean"), `recipe_tokens` [N, S, Wr] float32, `recipe_mask` [N, S]
    bool; output `score` [N] (the ITM head's matched probability, or the cosine of a "paper" head; higher =
    better match). N, P' and S are dynamic. The caller owns the
    atomic write (export to a temp path, then rename)."""
    scorer = MatchingScorer(matching, global_token).eval()
    p = next(matching.parameters())
    example = (
        torch.zeros(2, 5, matching.image_in.in_features, device=p.device),
        torch.zeros(2, 3, matching.recipe_in.in_features, device=p.device),
        torch.ones(2, 3, dtype=torch.bool, device=p.device),
    )
    with legacy_onnx_exporter():
        _export_scorer(scorer, example, path, opset)


@contextmanager
def legacy_onnx_exporter() -> Iterator[None]:
    """Around torch.onnx.export(..., dynamo=False): silences its DeprecationWarning, nothing else.

    Why not dynamo=True (measured with torch 2.13 on the matching head, 2 loaded CPU cores): the same
    numbers (max |diff| 3e-8) but 50-80 s per export against 2 s, and no opset 17 (its version converter
    fails on this graph and leaves opset 18), which the bundle and the TensorRT targets pin.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


def _export_scorer(scorer: nn.Module, example: tuple[torch.Tensor, ...], path: str, opset: int) -> None:
    torch.onnx.export(
        scorer,
        example,
        path,
        input_names=["image_tokens", "recipe_tokens", "recipe_mask"],
        output_names=["score"],
        dynamic_axes={
            "image_tokens": {0: "n", 1: "p"},
            "recipe_tokens": {0: "n", 1: "s"},
            "recipe_mask": {0: "n", 1: "s"},
            "score": {0: "n"},
        },
        opset_version=opset,
        # The TorchScript exporter: fast, and this graph (MatMul / Softmax / LayerNorm) needs nothing newer.
        dynamo=False,
    )
