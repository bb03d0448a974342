"""The trained matching head, read from a run's training state, exported for re-ranking and run by the SDK."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from malm.errors import MalmError
from malm.export.matching_head import export_head, load_trained_head
from malm.sdk.backends.ort import OrtSession
from malm.sdk.retriever import MatchingHeadScorer
from malm.training.config import load_preset
from malm.training.models.matching import MatchingModule, MatchingScorer


def _run_with_state(root: Path, itm: bool = True, late: bool = False) -> tuple[Path, MatchingModule, object]:
    """A run directory whose last.state holds a matching head, keyed as the training task saves it; with
    `itm=False`, a head as runs before loss.matching.mode (or mode "paper") saved it: no ITM layer; with
    `late`, the late-interaction local score the malm presets train (loss.matching.local_score "late")."""
    cfg = load_preset("malm-tiny")
    mc = cfg.loss.matching
    torch.manual_seed(0)
    head = MatchingModule(cfg.model.image.width, cfg.model.recipe.width, dim=cfg.model.recipe.width,
                          depth=mc.layers, heads=mc.heads, itm_head=itm, late_dim=cfg.model.embed_dim if late else 0).eval()
    root.mkdir(parents=True)
    tensors = {f"task.objectives.2.matching.{k}": v.contiguous() for k, v in head.state_dict().items()}
    tensors["task.image_encoder.other"] = torch.zeros(2)  # unrelated task state is ignored
    save_file(tensors, str(root / "last.state.safetensors"))
    (root / "last.state.json").write_text(json.dumps({"step": 7}))
    return root, head, cfg


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(("itm", "late"), [(True, True), (True, False), (False, False)],
                         ids=["late", "itm", "old-cosine"])
def test_exported_head_takes_patch_tokens_and_the_sdk_scores_like_torch(tmp_path: Path, itm: bool, late: bool) -> None:
    run, head, cfg = _run_with_state(tmp_path / "run", itm, late)
    trained = load_trained_head(run, cfg)
    assert trained is not None and trained.step == 7
    assert (trained.module.itm is not None) == itm  # read from the weights: old states keep their cosine head
    out = tmp_path / "matching_head.onnx"
    entry = export_head(trained, out, {"model_hash": "abc"})
    assert entry["global_token"] == "mean" and entry["image_tokens"] == "patches" and entry["parity_max_abs"] < 1e-4
    assert (trained.module.late is not None) == late
    assert entry["score"] == ("late_interaction" if late else "itm_probability" if itm else "cosine")

    width = cfg.model.recipe.width
    scorer = MatchingHeadScorer(OrtSession(out, ["CPUExecutionProvider"], threads=1), width)
    assert scorer.takes_patches
    rng = np.random.default_rng(0)
    patches = rng.standard_normal((4, cfg.model.image.width)).astype(np.float32)  # a 2x2 student grid
    recipes = [rng.standard_normal((n, width)).astype(np.float16) for n in (3, 7, 5)]
    got = scorer(patches, recipes)
    with torch.no_grad():
        img = torch.from_numpy(patches)[None].expand(3, -1, -1)
        pad = torch.zeros(3, 7, width)
        mask = torch.zeros(3, 7, dtype=torch.bool)
        for i, r in enumerate(recipes):
            pad[i, :len(r)] = torch.from_numpy(r.astype(np.float32))
            mask[i, :len(r)] = True
        want = MatchingScorer(head, "mean")(img, pad, mask).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
    if itm and not late:  # the ITM head's matched probability is what --rerank fuses
        assert ((got > 0) & (got < 1)).all()


def test_no_head_without_matching_loss_or_state(tmp_path: Path) -> None:
    assert load_trained_head(tmp_path, load_preset("ht-tiny")) is None  # preset without the matching loss
    assert load_trained_head(tmp_path, load_preset("malm-tiny")) is None  # no last.state.safetensors
    (tmp_path / "last.state.safetensors").write_bytes(b"garbage")
    with pytest.raises(MalmError, match="cannot be read"):
        load_trained_head(tmp_path, load_preset("malm-tiny"))
