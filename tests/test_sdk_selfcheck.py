"""The bundle checks its image encoder where it runs: real quantized int8 models, one deliberately broken
(its weight scales changed, as a bad kernel or calibration would leave it), no mocked check."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from _sdk_bundle import DIM, corrupt_int8, image_onnx, make_bundle, quantized_image_onnx, save_photos

from malm import Retriever, cpu
from malm.errors import MalmError
from malm.export.int8_gate import MIN_COSINE, check_export
from malm.export.report import to_markdown
from malm.manifest import SelfCheckSection
from malm.sdk import selfcheck
from malm.sdk.selfcheck import SelfCheckError


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALM_CACHE_DIR", str(tmp_path / "cache"))  # no stamp from another test or run
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("sc") / "good", 12, int8=True)


@pytest.fixture(scope="module")
def broken_cpu(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("sc") / "broken", 12, int8=True, corrupt=("image_int8_cpu",))


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "malm.sdk" and r.levelno == logging.WARNING]


def test_a_right_int8_encoder_passes_and_runs(good: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "malm.sdk"):
        r = Retriever.load(good)
    info = r.info()
    sc = info["selfcheck"]
    assert info["variant"] == "int8_cpu" and info["encoder"] == "encoders/image_int8_cpu.onnx"
    assert sc["status"] == "passed" and sc["cosine"] >= MIN_COSINE and not sc["remembered"] and sc["rejected"] == []
    assert sc["cosine"] < 0.99999  # really quantized: not the fp32 graph under the int8 name
    assert sc["cpu"] == cpu.description() and not _warnings(caplog)


def test_a_broken_int8_encoder_is_caught_and_fallen_back_from(broken_cpu: Path, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "malm.sdk"):
        r = Retriever.load(broken_cpu)
    assert r.backend.variant == "int8"  # the next in the CPU order, itself checked and right
    sc = r.info()["selfcheck"]
    assert sc["status"] == "passed" and sc["encoder"] == "int8"
    assert [x["encoder"] for x in sc["rejected"]] == ["int8_cpu"] and sc["rejected"][0]["cosine"] < 0.95
    assert "int8_cpu disagreed with the fp32 reference" in r.info()["variant_reason"]  # what `malm doctor` shows
    lines = _warnings(caplog)
    assert len(lines) == 1 and "int8_cpu" in lines[0] and "using int8 instead" in lines[0]
    assert cpu.description() in lines[0] and "mean cosine" in lines[0]
    # Results still right: photo i finds recipe i.
    photos = save_photos(tmp_path / "p", range(3))
    assert [r.search(str(p), k=1)[0].recipe_id for p in photos] == ["rec0000", "rec0001", "rec0002"]


def test_both_int8_broken_falls_back_to_fp32(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    b = make_bundle(tmp_path / "b", 8, int8=True, corrupt=("image_int8_cpu", "image_int8"))
    with caplog.at_level(logging.WARNING, "malm.sdk"):
        r = Retriever.load(b)
    assert r.backend.variant == "fp32" and r.info()["selfcheck"]["status"] == "passed"
    assert [x["encoder"] for x in r.info()["selfcheck"]["rejected"]] == ["int8_cpu", "int8"]
    lines = _warnings(caplog)
    assert len(lines) == 1 and "int8_cpu: " in lines[0] and "int8: " in lines[0] and "using fp32" in lines[0]


def test_strict_makes_a_disagreement_an_error(broken_cpu: Path) -> None:
    with pytest.raises(SelfCheckError, match=r"int8_cpu image encoder disagrees with fp32 on this CPU .*mean cosine 0\.\d+"):
        Retriever.load(broken_cpu, strict_selfcheck=True)
    # An explicitly chosen broken encoder is not replaced; strict refuses it, non-strict warns and keeps it.
    with pytest.raises(SelfCheckError):
        Retriever.load(broken_cpu, variant="int8_cpu", strict_selfcheck=True)
    r = Retriever.load(broken_cpu, variant="int8_cpu")
    assert r.backend.variant == "int8_cpu" and r.info()["selfcheck"]["status"] == "failed"


def test_a_remembered_failure_costs_no_session(broken_cpu: Path, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    Retriever.load(broken_cpu)
    from malm.sdk.backends import ort

    built: list[str] = []
    real = ort.OrtImageBackend.__init__

    def spy(self: ort.OrtImageBackend, path: object, variant: str, *a: object, **k: object) -> None:
        built.append(variant)
        real(self, path, variant, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(ort.OrtImageBackend, "__init__", spy)
    caplog.clear()
    with caplog.at_level(logging.WARNING, "malm.sdk"):
        r = Retriever.load(broken_cpu)
    assert built == ["int8"] and r.info()["selfcheck"]["remembered"]  # int8_cpu's failure was recalled
    assert len(_warnings(caplog)) == 1  # the user still hears it on every load


def test_the_result_is_remembered_per_machine(good: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = Retriever.load(good).info()["selfcheck"]
    calls: list[int] = []
    real = selfcheck.measure
    monkeypatch.setattr(selfcheck, "measure", lambda *a: calls.append(1) or real(*a))
    again = Retriever.load(good).info()["selfcheck"]
    assert again["remembered"] and again["seconds"] == 0 and again["cosine"] == first["cosine"] and not calls
    # Another CPU (or backend, or bundle file) is another key: checked again.
    monkeypatch.setattr(cpu, "fingerprint", lambda: "x86_64|Other CPU|avx2,avx512_vnni")
    other = Retriever.load(good).info()["selfcheck"]
    assert not other["remembered"] and calls == [1]


def test_a_bundle_without_selfcheck_data_avoids_int8_where_it_may_saturate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    b = make_bundle(tmp_path / "old", 8, int8=True, selfcheck=False)  # as exported before self-checks
    monkeypatch.setattr(cpu, "int8_may_saturate", lambda: True)
    with caplog.at_level(logging.WARNING, "malm.sdk"):
        r = Retriever.load(b)
    assert r.backend.variant == "fp32" and r.info()["selfcheck"]["status"] == "no_data"
    assert any("no self-check data" in w for w in _warnings(caplog))
    monkeypatch.setattr(cpu, "int8_may_saturate", lambda: False)  # VNNI / ARM: int8 is right there
    assert Retriever.load(b).backend.variant == "int8_cpu"


def test_query_json_says_which_encoder_ran_and_strict_fails(broken_cpu: Path, tmp_path: Path) -> None:
    photos = save_photos(tmp_path / "p", range(1))
    env = {"PYTHONPATH": str(Path(__file__).resolve().parent.parent), "MALM_CACHE_DIR": str(tmp_path / "c"),
           "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-c", "import malm.cli; malm.cli.main()", "query", str(photos[0]), "--bundle",
           str(broken_cpu), "--json", "--variant", "auto"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    enc = json.loads(p.stdout)["encoder"]
    if enc["device"] == "CPUExecutionProvider":  # the order this test knows (no GPU provider here)
        assert enc["variant"] == "int8" and enc["encoder"] == "encoders/image_int8.onnx"
        assert enc["selfcheck"]["status"] == "passed" and enc["selfcheck"]["rejected"][0]["encoder"] == "int8_cpu"
        assert sum("not used on this CPU" in line for line in p.stderr.splitlines()) == 1
    p = subprocess.run([*cmd, "--strict-selfcheck"], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and "disagrees with fp32" in p.stderr and "Traceback" not in p.stderr


def test_export_gate_refuses_a_broken_int8_model_and_the_flag_accepts_it(tmp_path: Path) -> None:
    fp32 = image_onnx(tmp_path / "fp32.onnx", tokens=False)
    good = quantized_image_onnx(fp32, tmp_path / "good.onnx", "image_int8")
    bad = corrupt_int8(quantized_image_onnx(fp32, tmp_path / "bad.onnx", "image_int8_cpu"))
    from _sdk_bundle import CFG, photo

    from malm.preprocess import preprocess

    images = np.stack([preprocess(photo(i), CFG) for i in range(700, 716)])
    files = [(fp32, "encoders/image_fp32.onnx"), (good, "encoders/image_int8.onnx"),
             (bad, "encoders/image_int8_cpu.onnx")]
    recipes = np.random.default_rng(0).normal(size=(16, DIM)).astype(np.float32)
    with pytest.raises(MalmError, match=r"int8 export refused, measured on .*image_int8_cpu in its exact QDQ "
                                        r"math: mean cosine to fp32 0\.\d+ < 0\.98.*--accept-int8-drop"):
        check_export(list(files), images, recipes, tmp_path, accept=False, say=lambda m: None)
    out = list(files)
    gate, sc = check_export(out, images, recipes, tmp_path, accept=True, say=lambda m: None)
    assert gate is not None and sc is not None
    assert gate["accepted"] and len(gate["failures"]) == 1 and gate["cpu"] == cpu.description()
    assert gate["variants"]["image_int8"]["cosine_mean_exact"] >= MIN_COSINE
    assert "R@1 drop reported, not gated: 16 held-out pairs" in gate["note"]
    md = to_markdown({"int8_gate": gate})
    assert "ACCEPTED with --accept-int8-drop" in md and f"measured on {cpu.description()}" in md
    assert {rel for _, rel in out} >= {"selfcheck/inputs.npy", "selfcheck/fp32_embeddings.npy"}
    assert sc.count == 8 and sc.min_cosine == MIN_COSINE and sc.expected["image_int8_cpu"] < 0.95
    assert SelfCheckSection.from_dict(sc.to_dict()) == sc
    with pytest.raises(MalmError, match="needs 'inputs' file name"):
        SelfCheckSection.from_dict({"fp32_embeddings": "x.npy"})


def test_accept_flag_needs_int8() -> None:
    from malm.export.registry import ExportOptions

    with pytest.raises(MalmError, match="--accept-int8-drop only applies with --int8"):
        ExportOptions("onnx", accept_int8_drop=True)


def test_bad_selfcheck_section_is_a_clear_error(good: Path, tmp_path: Path) -> None:
    from malm.bundle import BundleWriter

    b = tmp_path / "b"
    shutil.copytree(good, b)
    with BundleWriter(b) as bw:
        bw.manifest["selfcheck"]["min_cosine"] = "high"
    with pytest.raises(MalmError, match="selfcheck min_cosine must be a number"):
        Retriever.load(b)
