"""`malm index build | add | remove` through the command line, with a tiny (untrained) torch checkpoint."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch", reason="`malm index build` encodes with the torch recipe encoder")

from malm.bundle import verify  # noqa: E402
from malm.cli import app  # noqa: E402
from malm.edge_index.hnsw import HnswIndex, IndexSettings  # noqa: E402
from malm.edge_index.store import RecipeStore  # noqa: E402


@pytest.fixture(scope="module")
def run_and_data(tmp_path_factory: pytest.TempPathFactory, make_dataset: Callable[..., Path],
                 tiny_config: Callable[..., Path], tiny_words: list[str]) -> tuple[Path, Path]:
    from malm.text import Vocabulary
    from malm.training.checkpoint import save_run_files, save_weights
    from malm.training.config import load_preset
    from malm.training.models.retrieval import RetrievalModel

    root = tmp_path_factory.mktemp("idx")
    data = make_dataset(root / "data", n_train=6, n_val=2, n_test=8)
    config = load_preset(str(tiny_config(root / "tiny.json")))
    vocab = Vocabulary(tiny_words + ["cups", "cook", "the", "well", ".", "1", "2", "3"])
    torch.manual_seed(0)
    model = RetrievalModel(config.model, vocab_size=len(vocab)).eval()
    run = root / "run"
    run.mkdir()
    save_run_files(run, config, vocab)
    save_weights(run, "best", model, {"step": 0})
    return run, data


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_build_from_recipe1m_folder_matches_the_model(run_and_data: tuple[Path, Path], tmp_path: Path) -> None:
    run, data = run_and_data
    bundle = tmp_path / "bundle"
    out = invoke("index", "build", "--checkpoint", str(run), "--recipes", str(data), "--bundle", str(bundle),
                 "--split", "test", "--M", "8", "--ef-construction", "40", "--ef-search", "20", "--batch-size", "3",
                 "--json")
    report = json.loads(out)
    assert report["indexed"] == 8 and report["count"] == 8
    m = verify(bundle)
    assert {k: m["index"][k] for k in ("space", "dim", "M", "ef_construction", "ef_search", "count")} == {
        "space": "ip", "dim": 16, "M": 8, "ef_construction": 40, "ef_search": 20, "count": 8}
    # The model card follows the index (no examples.png: this bundle has no image encoder to search with).
    card = (bundle / "README.md").read_text()
    assert "8 recipes, 16-d" in card and "ef_search 20" in card and not (bundle / "examples.png").exists()
    # The stored vectors are the model's own recipe embeddings.
    from malm.recipe1m import load_recipe1m
    from malm.text import encode_recipe
    from malm.training.checkpoint import load_model

    loaded = load_model(run)
    store = RecipeStore.open(bundle / m["index"]["store"])
    index = HnswIndex.load(bundle / m["index"]["file"], IndexSettings.from_dict(m["index"]), store.labels())
    test = [r for r in load_recipe1m(data).recipes if r.partition == "test"]
    by_id = {rec.id: label for label, rec in store.get(store.labels()).items()}
    arrays = [encode_recipe(r.title, r.ingredients, r.instructions, loaded.vocab, loaded.config.data.limits())
              for r in test]
    batch = {k: torch.from_numpy(np.stack([a[k] for a in arrays]).astype(np.int64))
             for k in ("title", "ingredients", "instructions")}
    with torch.inference_mode():
        expected = loaded.model.encode_recipe(**batch).numpy()
    stored = index.get_vectors([by_id[r.id] for r in test])
    assert np.allclose(stored, expected, atol=1e-5)


def test_jsonl_build_add_remove(run_and_data: tuple[Path, Path], tmp_path: Path, tiny_words: list[str]) -> None:
    run, _ = run_and_data
    lines = [{"id": f"j{i}", "title": f"{tiny_words[i]} bowl", "ingredients": [f"1 cups {tiny_words[i]}", "salt"],
              "instructions": ["cook the rice well ."]} for i in range(6)]
    recipes = tmp_path / "r.jsonl"
    recipes.write_text("\n".join(json.dumps(x) for x in lines) + "\n{bad json\n" + json.dumps({"id": "j0",
                                                                                             "title": "dup"}))
    bundle = tmp_path / "b"
    report = json.loads(invoke("index", "build", "--checkpoint", str(run), "--recipes", str(recipes), "--bundle",
                               str(bundle), "--M", "8", "--rerank-tokens", "--json"))
    assert report["count"] == 6 and report["skipped"] == {"invalid_json": 1, "duplicate_id": 1}
    m = verify(bundle)
    assert m["rerank"]["kind"] == "late_interaction" and m["rerank"]["dim"] == 32  # recipe token width

    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"id": "k1", "title": "egg pasta", "ingredients": ["egg", "pasta"],
                                "instructions": ["boil ."]}) + "\n" + json.dumps(lines[0]))
    report = json.loads(invoke("index", "add", "--bundle", str(bundle), "--recipes", str(more), "--checkpoint",
                               str(run), "--json"))
    assert report["indexed"] == 1 and report["count"] == 7 and report["skipped"] == {"already_indexed": 1}
    out = invoke("index", "remove", "--bundle", str(bundle), "--ids", "j1", "j2", "zz")
    assert "removed 2 recipes" in out and "now holds 5" in out and "not found: zz" in out
    m = verify(bundle)
    assert RecipeStore.open(bundle / m["index"]["store"]).ids() == {"j0", "j3", "j4", "j5", "k1"}


def test_bad_options_are_user_errors(run_and_data: tuple[Path, Path], tmp_path: Path) -> None:
    from malm.errors import MalmError

    run, data = run_and_data
    with pytest.raises(MalmError, match="M >= 2"):
        CliRunner().invoke(app, ["index", "build", "--checkpoint", str(run), "--recipes", str(data), "--bundle",
                                 str(tmp_path / "b"), "--M", "1"], catch_exceptions=False)
    with pytest.raises(MalmError, match="no such file or folder"):
        CliRunner().invoke(app, ["index", "build", "--checkpoint", str(run), "--recipes", str(tmp_path / "nope"),
                                 "--bundle", str(tmp_path / "b")], catch_exceptions=False)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(MalmError, match="no valid recipes"):
        CliRunner().invoke(app, ["index", "build", "--checkpoint", str(run), "--recipes", str(empty), "--bundle",
                                 str(tmp_path / "b")], catch_exceptions=False)


def test_refuses_a_bundle_exported_from_other_weights(run_and_data: tuple[Path, Path], tmp_path: Path) -> None:
    from malm.bundle import BundleWriter
    from malm.errors import MalmError

    run, data = run_and_data
    with BundleWriter(tmp_path / "b") as bw:
        bw.manifest["model"] = {"checkpoint_sha256": "0" * 64}
    with pytest.raises(MalmError, match="exported from other weights"):
        CliRunner().invoke(app, ["index", "build", "--checkpoint", str(run), "--recipes", str(data), "--bundle",
                                 str(tmp_path / "b")], catch_exceptions=False)


def test_rerank_with_an_exported_matching_head(tmp_path: Path) -> None:
    """The SDK runs the training side's matching module exported to ONNX, pairwise, as torch scores it."""
    from _sdk_bundle import make_bundle, photo

    from malm import Retriever
    from malm.bundle import BundleWriter
    from malm.preprocess import preprocess
    from malm.training.models.matching import MatchingModule, MatchingScorer, legacy_onnx_exporter

    bundle = make_bundle(tmp_path / "b", 20)  # image tokens [16, 3]; stored recipe tokens [8, 3]
    torch.manual_seed(0)
    matching = MatchingModule(image_width=3, recipe_width=3, dim=8, depth=1, heads=2).eval()
    # As export_matching_onnx does, but with this encoder's 16 patch tokens (+1 [CLS]) in the example: that
    # function pins the image-token count of its example (5) into the graph.
    scorer = MatchingScorer(matching).eval()
    example = (torch.zeros(2, 17, 3), torch.zeros(2, 3, 3), torch.ones(2, 3, dtype=torch.bool))
    with legacy_onnx_exporter():  # the TorchScript exporter, as export_matching_onnx (why: see there)
        torch.onnx.export(scorer, example, str(tmp_path / "head.onnx"),
                          input_names=["image_tokens", "recipe_tokens", "recipe_mask"], output_names=["score"],
                          dynamic_axes={"image_tokens": {0: "n"}, "recipe_tokens": {0: "n", 1: "s"},
                                        "recipe_mask": {0: "n", 1: "s"}, "score": {0: "n"}}, opset_version=17,
                          dynamo=False)
    with BundleWriter(bundle) as bw:
        bw.add_file(tmp_path / "head.onnx", "encoders/matching_head.onnx")
        bw.manifest["rerank"] = {**bw.manifest["rerank"], "kind": "matching_head",
                                 "model": "encoders/matching_head.onnx", "weight": 1.0, "candidates": 5}
    r = Retriever.load(bundle)
    hits = r.search(photo(4), k=5, rerank=True)
    assert sorted(h.recipe_id for h in hits) == sorted(h.recipe_id for h in r.search(photo(4), k=5))
    # weight 1.0: the order is the matching head's alone; recompute it with torch.
    snap = r._snap
    emb = r.backend.encode(preprocess(photo(4), snap.bundle.preprocess)[None], tokens=True)
    labels = [snap.store.labels_for_ids([h.recipe_id])[h.recipe_id] for h in hits]
    rec = [torch.from_numpy(np.asarray(snap.rerank.tokens.get(label), np.float32)) for label in labels]
    patches = torch.from_numpy(emb.tokens[0])
    with torch.no_grad():
        # The SDK puts the patches' mean in front as the [CLS] the image ONNX does not output.
        img = torch.cat([patches.mean(0, keepdim=True), patches]).expand(len(rec), -1, -1)
        scores = matching.score(img, torch.stack(rec), torch.ones(len(rec), rec[0].shape[0], dtype=torch.bool))
    assert [h.score for h in hits] == pytest.approx(scores.tolist(), abs=1e-4)
    assert all(a >= b for a, b in zip(scores.tolist(), scores.tolist()[1:], strict=False))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_build_uses_the_matching_head_that_export_shipped(run_and_data: tuple[Path, Path], tmp_path: Path,
                                                         tiny_words: list[str]) -> None:
    """`malm export --tokens` writes rerank/matching_head.onnx; `index build` then stores the recipe token
    features it needs and points the rerank section at it, without --rerank-tokens."""
    from malm.bundle import BundleWriter
    from malm.training.models.matching import MatchingModule, export_matching_onnx

    run, _ = run_and_data
    torch.manual_seed(0)
    head = tmp_path / "head.onnx"
    export_matching_onnx(MatchingModule(image_width=32, recipe_width=32, dim=32, depth=1, heads=4).eval(), str(head),
                         global_token="mean")
    bundle = tmp_path / "b"
    with BundleWriter(bundle) as bw:
        bw.add_file(head, "rerank/matching_head.onnx")
        bw.manifest.setdefault("encoders", {})["matching_head"] = {"file": "rerank/matching_head.onnx",
                                                                   "kind": "onnx", "role": "rerank"}
    recipes = tmp_path / "r.jsonl"
    recipes.write_text("\n".join(json.dumps({"id": f"j{i}", "title": f"{tiny_words[i]} bowl", "ingredients": [tiny_words[i]],
                                             "instructions": ["cook ."]}) for i in range(4)))
    invoke("index", "build", "--checkpoint", str(run), "--recipes", str(recipes), "--bundle", str(bundle), "--M", "8")
    m = verify(bundle)
    assert m["rerank"]["kind"] == "matching_head" and m["rerank"]["model"] == "rerank/matching_head.onnx"
    assert m["rerank"]["default"] is False and m["rerank"]["tokens"] in m["files"]
