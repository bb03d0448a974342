"""Random patch masking for MALM's mask augmentation.

Each sample gets its own random subset of patches hidden from the student encoder. The indices are
sorted so that the visible tokens keep their raster order (the ViT adds positional embeddings before
dropping, so order only matters for readability and for deterministic tests).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from malm.errors import MalmError


@dataclass(frozen=True)
class PatchMask:
    """Which patches one batch shows and hides (patch indices exclude the [CLS] token)."""

    keep_idx: torch.Tensor  # int64 [B, K] visible patches, ascending
    mask_idx: torch.Tensor  # int64 [B, M] masked patches, ascending
    num_patches: int  # P = K + M

    @classmethod
    def from_keep(cls, keep_idx: torch.Tensor, num_patches: int) -> PatchMask:
        """The mask whose visible patches are `keep_idx` [B, K] (same K for every sample)."""
        b, k = keep_idx.shape
        hidden = torch.ones(b, num_patches, dtype=torch.bool, device=keep_idx.device)
        hidden.scatter_(1, keep_idx, False)
        # A stable sort puts each row's hidden positions first, in ascending order; unlike nonzero() it
        # needs no host sync to size its output.
        mask_idx = torch.sort(hidden.to(torch.int8), dim=1, descending=True, stable=True).indices[:, : num_patches - k]
        return cls(keep_idx=keep_idx.sort(dim=1).values, mask_idx=mask_idx, num_patches=num_patches)

    @property
    def masked(self) -> torch.Tensor:
        """bool [B, P], True where the patch is hidden from the student."""
        out = torch.zeros(
            self.keep_idx.shape[0], self.num_patches, dtype=torch.bool, device=self.keep_idx.device
        )
        return out.scatter_(1, self.mask_idx, True)


def num_masked(num_patches: int, ratio: float) -> int:
    """How many of `num_patches` a ratio hides; at least one patch always stays visible."""
    if not 0.0 <= ratio < 1.0:
        raise MalmError(f"mask ratio must be in [0, 1), got {ratio}")
    if num_patches < 1:
        raise MalmError(f"num_patches must be >= 1, got {num_patches}")
    return min(int(round(ratio * num_patches)), num_patches - 1)


def random_patch_mask(
    batch_size: int,
    num_patches: int,
    ratio: float,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> PatchMask:
    """Hide `round(ratio * P)` random patches per sample (same count for every sample, so tensors stay
    rectangular). Draws from `generator`, or from torch's global RNG so a seeded run is reproducible."""
    if batch_size < 1:
        raise MalmError(f"batch_size must be >= 1, got {batch_size}")
    m = num_masked(num_patches, ratio)
    # argsort of uniform noise is a uniformly random permutation per row (the MAE recipe).
    # Drawn on the generator's device (CPU by default) so a seed gives the same mask on any device.
    noise = torch.rand(
        batch_size, num_patches, generator=generator, device=generator.device if generator else "cpu"
    )
    order = noise.argsort(dim=1)
    if device is not None:
        order = order.to(device, non_blocking=True)  # a blocking copy would wait for the GPU queue
    mask_idx = order[:, :m].sort(dim=1).values
    keep_idx = order[:, m:].sort(dim=1).values
    return PatchMask(keep_idx=keep_idx, mask_idx=mask_idx, num_patches=num_patches)
