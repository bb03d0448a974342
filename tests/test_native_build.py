"""`malm doctor` says which CPU the installed hnswlib was compiled for and whether it runs here (a child
process takes the SIGILL of a `-march=native` build from another machine)."""

from __future__ import annotations

import shutil

import pytest

from malm import native_build


def test_classify_disassembly() -> None:
    assert native_build.classify_disassembly("vfmadd231ps %zmm1,%zmm2,%zmm0") == "avx512"
    assert native_build.classify_disassembly("kmovw %k1,%eax\nvaddps %ymm0,%ymm1,%ymm1") == "avx512"
    assert native_build.classify_disassembly("vaddps %ymm0,%ymm1,%ymm1\naddps %xmm1,%xmm0") == "avx2"
    assert native_build.classify_disassembly("addps %xmm1,%xmm0\nmov %k,%eax") == "sse"


def test_installed_hnswlib_is_described_and_runs_here() -> None:
    info = native_build.hnswlib_build()
    assert info["file"] and info["file"].endswith((".so", ".pyd", ".dylib"))
    assert info["runs_here"] is True and info["advice"] is None, info
    if shutil.which("objdump"):
        assert info["instructions"] in ("avx512", "avx2", "sse") and info["source"] == "objdump"


@pytest.mark.parametrize("code, says", [
    ("import os, signal; os.kill(os.getpid(), signal.SIGILL)", "SIGILL"),
    ("raise SystemExit(3)", "exit status 3"),
])
def test_a_build_that_cannot_run_here_gets_the_portable_reinstall(code: str, says: str) -> None:
    info = native_build.hnswlib_build(code=code)
    assert info["runs_here"] is False and says in info["check"]
    assert "HNSWLIB_NO_NATIVE=1" in info["advice"]


def test_an_avx512_build_on_a_cpu_without_it_is_named_when_the_check_cannot_run(monkeypatch:
                                                                                pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native_build, "probe", lambda code=native_build.PROBE: (None, "could not run"))
    monkeypatch.setattr(native_build, "classify_disassembly", lambda text: "avx512")
    info = native_build.hnswlib_build(cpu_flags={"avx2", "fma"})
    if info["source"] == "objdump":
        assert "HNSWLIB_NO_NATIVE=1" in info["advice"]


def test_doctor_reports_the_build() -> None:
    from malm.commands.doctor import doctor_report

    report = doctor_report(None)
    assert report["hnswlib_build"]["runs_here"] is True
    assert not any("hnswlib" in p for p in report["problems"])
