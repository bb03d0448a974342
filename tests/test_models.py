"""Shapes and masking of the ViT and recipe encoders; pretrained-weight key mapping; MiniLM sentence features."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from malm.errors import MalmError
from malm.training.config import ImageEncoderConfig, ModelConfig, RecipeEncoderConfig
from malm.training.models import HierarchicalRecipeEncoder, RetrievalModel, VisionTransformer, random_keep_idx
from malm.training.models.init_weights import load_image_init, load_state_into

TINY = ImageEncoderConfig(image_size=32, patch_size=8, width=32, depth=2, heads=4, mlp_ratio=2.0, drop_path=0.0)


def test_vit_full_and_masked_shapes() -> None:
    torch.manual_seed(0)
    vit = VisionTransformer(TINY).eval()
    x = torch.randn(3, 3, 32, 32)
    full = vit(x)
    assert full.cls.shape == (3, 32) and full.tokens.shape == (3, 16, 32) and full.keep_idx is None
    keep = random_keep_idx(3, 16, 0.75)
    assert keep.shape == (3, 4) and bool((keep.diff(dim=1) > 0).all())
    masked = vit(x, keep)
    assert masked.tokens.shape == (3, 4, 32) and masked.cls.shape == (3, 32)
    filled = vit.fill_masked(masked.tokens, keep)
    assert filled.shape == (3, 16, 32)
    for b in range(3):
        visible = set(keep[b].tolist())
        for p in range(16):
            if p in visible:
                pos = keep[b].tolist().index(p)
                torch.testing.assert_close(filled[b, p], masked.tokens[b, pos])
            else:  # mask token + that patch's position embedding
                torch.testing.assert_close(filled[b, p], vit.mask_token[0, 0] + vit.pos_embed[0, 1 + p])


def test_vit_masked_equals_encoding_only_visible_patches() -> None:
    # Keeping every patch is the same as no mask; a patch outside keep_idx cannot influence the output.
    torch.manual_seed(0)
    vit = VisionTransformer(TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    all_idx = torch.arange(16).expand(2, 16)
    torch.testing.assert_close(vit(x, all_idx).cls, vit(x).cls)
    keep = torch.tensor([[0, 5, 10, 15], [1, 2, 3, 4]])
    y = x.clone()
    y[:, :, 24:, :8] += 5.0  # patch 12 (row 3, col 0): masked in both samples
    torch.testing.assert_close(vit(x, keep).cls, vit(y, keep).cls)
    assert not torch.allclose(vit(x).cls, vit(y).cls)


def test_mask_token_gets_gradient() -> None:
    vit = VisionTransformer(TINY)
    keep = random_keep_idx(2, 16, 0.5)
    out = vit(torch.randn(2, 3, 32, 32), keep)
    vit.fill_masked(out.tokens, keep).sum().backward()
    assert vit.mask_token.grad is not None and vit.mask_token.grad.abs().sum() > 0


def _recipe_batch(vocab: int = 50) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    title = torch.randint(4, vocab, (3, 6), generator=g)
    title[:, 0], title[0, 4:] = 1, 0
    ingr = torch.randint(4, vocab, (3, 5, 7), generator=g)
    ingr[:, :, 5:] = 0
    ingr[0, 2:] = 0  # recipe 0: 2 ingredients
    ingr[2] = 0  # recipe 2: no ingredient at all
    instr = torch.randint(4, vocab, (3, 4, 7), generator=g)
    instr[1, 1:] = 0
    return title, ingr, instr


def test_recipe_encoder_shapes_and_mask() -> None:
    torch.manual_seed(0)
    cfg = RecipeEncoderConfig(width=32, word_layers=1, component_layers=1, heads=4, dropout=0.0)
    enc = HierarchicalRecipeEncoder(cfg, vocab_size=50, embed_dim=24).eval()
    title, ingr, instr = _recipe_batch()
    out = enc(title, ingr, instr)
    assert out.embedding.shape == (3, 24)
    assert out.tokens.shape == (3, 1 + 5 + 4, 32) and out.token_mask.shape == (3, 10)
    assert out.token_mask[0].tolist() == [True, True, True, False, False, False, True, True, True, True]
    assert not out.token_mask[2, 1:6].any()
    assert torch.isfinite(out.embedding).all() and torch.isfinite(out.tokens).all()
    assert out.tokens[2, 1:6].abs().sum() == 0  # absent ingredients give zero tokens
    for v in (out.title, out.ingredients, out.instructions):
        assert v.shape == (3, 32)
    # Padding does not leak: changing tokens of an absent ingredient row / after padding changes nothing.
    ingr2 = ingr.clone()
    ingr2[0, 3, :] = 0  # already absent
    ingr2[0, 0, 6] = 0  # already padding
    torch.testing.assert_close(enc(title, ingr2, instr).embedding, out.embedding)
    # Batch independence: recipe 1 alone gives the same result.
    alone = enc(title[1:2], ingr[1:2], instr[1:2])
    torch.testing.assert_close(alone.embedding, out.embedding[1:2], atol=1e-5, rtol=1e-4)


def test_retrieval_model_normalized() -> None:
    cfg = ModelConfig(image=TINY, recipe=RecipeEncoderConfig(width=32, word_layers=1, component_layers=1, heads=4),
                      embed_dim=16)
    model = RetrievalModel(cfg, vocab_size=50).eval()
    img = model.encode_image(torch.randn(2, 3, 32, 32))
    rec = model.encode_recipe(*_recipe_batch())
    torch.testing.assert_close(img.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(rec.norm(dim=1), torch.ones(3))


def _clip_state(src: VisionTransformer) -> dict[str, torch.Tensor]:
    """The same weights under open_clip names (as `model.visual.state_dict()` with `visual.` prefix)."""
    s = src.state_dict()
    out = {
        "visual.conv1.weight": s["patch_embed.proj.weight"],
        "visual.class_embedding": s["cls_token"].reshape(-1),
        "visual.positional_embedding": s["pos_embed"][0],
        "visual.ln_pre.weight": s["norm_pre.weight"], "visual.ln_pre.bias": s["norm_pre.bias"],
        "visual.ln_post.weight": s["norm.weight"], "visual.ln_post.bias": s["norm.bias"],
        "visual.proj": torch.randn(32, 16),
        "logit_scale": torch.tensor(1.0),
    }
    for i in range(TINY.depth):
        b, o = f"blocks.{i}.", f"visual.transformer.resblocks.{i}."
        out |= {o + "ln_1.weight": s[b + "norm1.weight"], o + "ln_1.bias": s[b + "norm1.bias"],
                o + "attn.in_proj_weight": s[b + "attn.qkv.weight"], o + "attn.in_proj_bias": s[b + "attn.qkv.bias"],
                o + "attn.out_proj.weight": s[b + "attn.proj.weight"], o + "attn.out_proj.bias": s[b + "attn.proj.bias"],
                o + "ln_2.weight": s[b + "norm2.weight"], o + "ln_2.bias": s[b + "norm2.bias"],
                o + "mlp.c_fc.weight": s[b + "mlp.fc1.weight"], o + "mlp.c_fc.bias": s[b + "mlp.fc1.bias"],
                o + "mlp.c_proj.weight": s[b + "mlp.fc2.weight"], o + "mlp.c_proj.bias": s[b + "mlp.fc2.bias"]}
    return out


def test_image_init_open_clip_names(tmp_path) -> None:
    from safetensors.torch import save_file

    cfg = ImageEncoderConfig(**{**TINY.__dict__, "act": "quick_gelu", "norm_pre": True, "layer_norm_eps": 1e-5})
    torch.manual_seed(0)
    src = VisionTransformer(cfg).eval()
    with torch.no_grad():
        src.patch_embed.proj.bias.zero_()  # CLIP's conv1 has no bias
    state = _clip_state(src)
    path = tmp_path / "clip_vit.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    torch.manual_seed(1)
    dst = VisionTransformer(cfg).eval()
    report = load_image_init(dst, path)
    assert report.missing == ["mask_token"]
    assert sorted(report.unexpected) == ["logit_scale", "visual.proj"]
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(dst(x).cls, src(x).cls)


def test_image_init_timm_names_split_qkv_and_resized_grid() -> None:
    torch.manual_seed(0)
    big = ImageEncoderConfig(**{**TINY.__dict__, "image_size": 64})  # 8x8 grid in the source
    src = VisionTransformer(big)
    state = {f"module.{k}": v for k, v in src.state_dict().items() if "attn.qkv" not in k and k != "mask_token"}
    for i in range(TINY.depth):  # separate q/k/v projections, as some exports have
        qkv = src.blocks[i].attn.qkv
        for part, w, b in zip("qkv", qkv.weight.chunk(3), qkv.bias.chunk(3), strict=True):
            state[f"module.blocks.{i}.attn.{part}_proj.weight"] = w
            state[f"module.blocks.{i}.attn.{part}_proj.bias"] = b
    state["module.head.weight"] = torch.randn(10, 32)
    dst = VisionTransformer(TINY)  # 4x4 grid
    report = load_state_into(dst, state)
    assert report.unexpected == ["module.head.weight"] and report.missing == ["mask_token"]
    assert any("resized" in n for n in report.notes)
    torch.testing.assert_close(dst.blocks[1].attn.qkv.weight, src.blocks[1].attn.qkv.weight)
    assert dst.pos_embed.shape == (1, 17, 32)
    torch.testing.assert_close(dst.pos_embed[0, 0], src.pos_embed[0, 0])


def test_image_init_rejects_wrong_shapes_and_pickles(tmp_path) -> None:
    other = VisionTransformer(ImageEncoderConfig(**{**TINY.__dict__, "width": 64}))
    with pytest.raises(MalmError, match="shapes do not match"):
        load_state_into(VisionTransformer(TINY), other.state_dict())
    with pytest.raises(MalmError, match="no ViT weights"):
        load_state_into(VisionTransformer(TINY), {"foo.bar": torch.zeros(2)})
    pt = tmp_path / "w.pt"
    pt.write_bytes(b"not read")
    with pytest.raises(MalmError, match="only .safetensors"):
        load_image_init(VisionTransformer(TINY), pt)


@pytest.mark.slow  # importing sentence-transformers + loading MiniLM takes ~5-25 s on a busy 2-core machine
def test_minilm_sentence_features_offline(tmp_path) -> None:
    import numpy as np
    from _tiny_run import make_dataset

    from malm.training.data import RecipeImageDataset, prepare
    from malm.training.models.minilm import encode_sentences, with_sentence_features

    vecs = encode_sentences(["Boil the pasta in salted water.", "Cook the spaghetti in boiling water.",
                             "2 cups of sugar"])
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2]  # a pretrained model: paraphrases are closer

    data = make_dataset(tmp_path / "d", n_train=4, n_val=2, n_test=3)
    prepared = prepare(data, min_freq=1)
    base = RecipeImageDataset(prepared, "test", _pre(), train=False)
    ds = with_sentence_features(base, prepared, "test")
    assert (prepared.cache_dir / "minilm_test.npy").is_file()  # cached per recipe on disk
    item = ds[0]
    ni, ns = prepared.limits.max_ingredients, prepared.limits.max_instructions
    assert item["title"].shape == (384,) and item["ingredients"].shape == (ni, 384)
    assert item["instructions"].shape == (ns, 384)
    cfg = RecipeEncoderConfig(width=32, word_layers=1, component_layers=1, heads=4, sentence_features="minilm")
    enc = HierarchicalRecipeEncoder(cfg, vocab_size=10, embed_dim=16).eval()
    batch = [ds[i] for i in range(3)]
    out = enc(*(torch.stack([b[k] for b in batch]) for k in ("title", "ingredients", "instructions")))
    assert out.embedding.shape == (3, 16) and out.tokens.shape == (3, 1 + ni + ns, 32)
    n_ingr = int((item["ingredients"].abs().sum(1) > 0).sum())
    assert 2 <= n_ingr <= 4 and out.token_mask[0, 1 : 1 + ni].sum() == n_ingr


def _pre():
    from malm.preprocess import PreprocessConfig

    return PreprocessConfig.for_size(32)


# --------------------------------------------------------------- one block, and checkpoints from before it


def _old_encoder_keys(state: dict, prefix: str) -> dict:
    """Today's SequenceEncoder keys under `prefix` -> the nn.TransformerEncoder names runs used to save."""
    import re

    rename = {"attn.qkv.weight": "self_attn.in_proj_weight", "attn.qkv.bias": "self_attn.in_proj_bias",
              "attn.proj.": "self_attn.out_proj.", "mlp.fc1.": "linear1.", "mlp.fc2.": "linear2."}
    out = {}
    for k, v in state.items():
        m = re.fullmatch(re.escape(prefix) + r"blocks\.(\d+)\.(.+)", k)
        if m:
            rest = m.group(2)
            for new, old in rename.items():
                if rest.startswith(new):
                    rest = old + rest[len(new):]
                    break
            k = f"{prefix}encoder.layers.{m.group(1)}.{rest}"
        elif k.startswith(prefix + "norm."):
            k = prefix + "encoder." + k[len(prefix):]
        out[k] = v
    return out


def test_recipe_encoder_matches_torch_transformer_encoder_and_loads_its_checkpoints() -> None:
    """The shared block computes what nn.TransformerEncoder(norm_first, gelu) computed, on the same weights."""
    from torch import nn

    from malm.training.models.recipe import SequenceEncoder

    torch.manual_seed(0)
    cfg = RecipeEncoderConfig(width=32, heads=4, dropout=0.0)
    enc = SequenceEncoder(cfg, layers=2, positional=False).eval()
    layer = nn.TransformerEncoderLayer(32, 4, int(32 * cfg.mlp_ratio), 0.0, activation="gelu", batch_first=True,
                                       norm_first=True)
    old = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(32), enable_nested_tensor=False).eval()
    old_state = {"encoder." + k: v for k, v in old.state_dict().items()}
    assert set(_old_encoder_keys(enc.state_dict(), "")) == set(old_state)  # the test's map is the real layout
    enc.load_state_dict(old_state)  # old names, strict
    x, valid = torch.randn(3, 6, 32), torch.ones(3, 6, dtype=torch.bool)
    valid[1, 4:] = False
    with torch.no_grad():
        torch.testing.assert_close(enc(x, valid)[0][valid], old(x, src_key_padding_mask=~valid)[valid], atol=1e-5, rtol=1e-5)


def test_model_and_decoders_load_checkpoints_with_pre_shared_block_names(tiny_preset: Any) -> None:
    """A whole MALM task saved with the old names (TransformerEncoder in the recipe encoder, separate
    q/k/v/out, norm_self/norm_mlp/mlp.0/mlp.2 in the decoders) loads strictly and computes the same."""
    from malm.training.task import Task

    cfg = tiny_preset("malm-tiny", {"loss.cross_decoder.weight": 1.0})
    torch.manual_seed(0)
    src = Task(cfg, vocab_size=40).eval()
    state = src.state_dict()
    old: dict = {}
    import re

    for k, v in state.items():  # decoders: qkv -> q, k, v; proj -> out; norms and MLP by their old names
        m = re.fullmatch(r"(.+\.)(attn|cross_attn)\.(qkv|proj)\.(weight|bias)", k)
        is_decoder = m and any(s in k for s in ("matching.", "cross_decoder.", "predictor.", "distill"))
        if is_decoder and m.group(3) == "qkv":
            name = "self_attn" if m.group(2) == "attn" else "cross_attn"
            for part, chunk in zip("qkv", v.chunk(3, dim=0), strict=True):
                old[f"{m.group(1)}{name}.{part}.{m.group(4)}"] = chunk
        elif is_decoder:
            old[f"{m.group(1)}{'self_attn' if m.group(2) == 'attn' else 'cross_attn'}.out.{m.group(4)}"] = v
        elif any(s in k for s in ("matching.", "cross_decoder.", "predictor.", "distill")) and re.search(
                r"\.(norm1|norm2|mlp\.fc1|mlp\.fc2)\.", k) and "image_encoder" not in k and "blocks." in k:
            k2 = k.replace(".norm1.", ".norm_self.").replace(".norm2.", ".norm_mlp.")
            old[k2.replace(".mlp.fc1.", ".mlp.0.").replace(".mlp.fc2.", ".mlp.2.")] = v
        else:
            old[k] = v
    encoders = sorted({m.group(1) for k in old if (m := re.match(r"(.+?\.)blocks\.\d+\.attn\.qkv", k))
                       and "recipe_encoder" in k})
    for prefix in encoders:
        old = _old_encoder_keys(old, prefix)
    assert any("encoder.layers.0.self_attn.in_proj_weight" in k for k in old)
    assert any(".self_attn.q.weight" in k for k in old) and any(".norm_mlp." in k for k in old)
    torch.manual_seed(1)
    dst = Task(cfg, vocab_size=40).eval()
    dst.load_state_dict(old)  # strict
    for k, v in dst.state_dict().items():
        assert torch.equal(v, state[k]), k
