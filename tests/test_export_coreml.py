"""CoreML conversion on Linux: the mlprogram is written and its spec inspected; prediction needs macOS."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("coremltools", reason="coremltools is part of malm[export]; without it the coreml target "
                                          "reports the install hint (tested in test_export_registry)")

from malm.export import coreml  # noqa: E402
from malm.preprocess import PreprocessConfig  # noqa: E402

PP = PreprocessConfig.for_size(32)


class TinyEncoder(torch.nn.Module):
    """A small CNN with the exporters' (embedding, tokens) face: fast to convert and compress."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 32, 3, stride=2, padding=1)
        self.conv2 = torch.nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.proj = torch.nn.Linear(64, 16)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        f = torch.nn.functional.relu6(self.conv2(torch.nn.functional.relu6(self.conv1(x))))
        return torch.nn.functional.normalize(self.proj(f.mean((2, 3))), dim=-1), None


@pytest.fixture(scope="module")
def encoder() -> torch.nn.Module:
    torch.manual_seed(0)
    return TinyEncoder().eval()


def test_fp16_mlprogram_with_image_input_and_metadata(encoder: torch.nn.Module, tmp_path: Path) -> None:
    """(The EfficientNet-Lite0 student itself is converted in test_export_command's coreml export.)"""
    import coremltools as ct

    out = tmp_path / "image.mlpackage"
    info = coreml.convert(encoder, out, PP, metadata={"malm_version": "0.1.0", "embedding_dim": "16",
                                                     "preprocess": json.dumps(PP.to_dict())})
    assert out.is_dir() and (out / "Manifest.json").is_file()
    assert info["model_type"] == "mlProgram"
    assert info["inputs"] == {"image": {"type": "image", "width": 32, "height": 32, "color": "RGB"}}
    assert info["outputs"]["embedding"]["shape"] == [1, 16]
    assert info["outputs"]["embedding"]["dtype"] == "float16" and info["fp16_compute"]
    assert info["compression_ops"] == []
    spec = ct.models.MLModel(str(out), skip_model_load=True).get_spec()
    meta = dict(spec.description.metadata.userDefined)
    assert meta["embedding_dim"] == "16" and json.loads(meta["preprocess"])["size"] == 32
    assert meta["malm_version"] == "0.1.0" and meta["weights"] == "none"
    # The ImageType scales 0..255 to 0..1; mean/std run inside the model.
    assert spec.description.input[0].type.imageType.width == 32
    if platform.system() != "Darwin":
        assert info["prediction"].startswith("skipped: CoreML prediction needs macOS")


@pytest.mark.parametrize(("weights", "op"), [("int8", "constexpr_affine_dequantize"),
                                              ("palettize6", "constexpr_lut_to_dense")])
def test_weight_compression(encoder: torch.nn.Module, tmp_path: Path, weights: str, op: str) -> None:
    plain = tmp_path / "plain.mlpackage"
    coreml.convert(encoder, plain, PP)
    out = tmp_path / f"{weights}.mlpackage"
    info = coreml.convert(encoder, out, PP, weights=weights)
    assert op in info["compression_ops"] and info["weights"] == weights

    def size(p: Path) -> int:
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())

    assert size(out) < 0.7 * size(plain)


def test_unknown_weight_mode_is_refused(encoder: torch.nn.Module, tmp_path: Path) -> None:
    from malm.errors import MalmError

    with pytest.raises(MalmError, match="--weights must be one of"):
        coreml.convert(encoder, tmp_path / "x.mlpackage", PP, weights="int4")


def test_linux_noise_is_filtered_at_the_source(encoder: torch.nn.Module, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """coremltools' macOS-bridge failures, version checks and per-pass tqdm bars never reach our stderr;
    what we do not recognise still does."""
    capsys.readouterr()
    coreml.convert(encoder, tmp_path / "w8.mlpackage", PP, weights="int8")
    err = capsys.readouterr().err
    for noise in ("Failed to load", "Running MIL", "Converting PyTorch Frontend", "passes/s", "scikit-learn"):
        assert noise not in err, err
    with coreml.quiet_coremltools():
        print("Running MIL default pipeline: 100%|██| 95/95\rFailed to load _MLModelProxy: x", file=sys.stderr)
        print("a real warning", file=sys.stderr)
    assert capsys.readouterr().err == "a real warning\n"
