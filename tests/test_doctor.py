"""`malm doctor`, `Retriever.info()`, CPU features, the per-device ONNX Runtime extra and the portable lock.

No GPU here: GPU providers and a missing ONNX Runtime are simulated (patched provider list, a subprocess in
which `import onnxruntime` / `import fcntl` fail), the way a user's machine would present them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnxruntime
import pytest
from _sdk_bundle import make_bundle

from malm import Retriever
from malm.commands.doctor import doctor_report
from malm.cpu_features import cpu_features, parse_cpuinfo
from malm.sdk import diagnostics

REPO = Path(__file__).resolve().parent.parent

X86_VNNI = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 amx_tile amx_int8 hypervisor

processor\t: 1
flags\t\t: fpu
"""
# A Jetson Orin (Cortex-A78AE): NEON (asimd) and the dot product (asimddp), no i8mm.
ORIN = """processor\t: 0
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp uscat ilrcpc flagm paca pacg
CPU implementer\t: 0x41
CPU part\t: 0xd42
"""


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env}, check=False)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("doc") / "b", 12, int8_alias=True)


def test_cpu_features_from_cpuinfo() -> None:
    x86 = parse_cpuinfo(X86_VNNI, "x86_64")
    assert x86.flags == ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8")
    assert x86.hypervisor and x86.model.startswith("Intel") and x86.int8_path.startswith("AMX int8")
    orin = parse_cpuinfo(ORIN, "aarch64")
    assert orin.flags == ("asimd", "asimddp") and orin.int8_path == "ARM NEON dot product (sdot/udot)"
    avx2 = parse_cpuinfo("flags : avx2 fma sse4_2\n", "x86_64")
    assert avx2.int8_path.startswith("AVX2 without VNNI")
    unknown = parse_cpuinfo("", "x86_64")
    assert not unknown.known and unknown.int8_path.startswith("unknown")
    here = cpu_features()  # this machine: Linux, so read from /proc/cpuinfo
    assert here.source == "/proc/cpuinfo" and here.to_dict()["flags"] == list(here.flags)


def test_machine_info_uses_the_same_features() -> None:
    from benchmarks.machine import machine_info

    info = machine_info()
    assert info["cpu_flags"] == sorted(cpu_features().flags) and info["cpu_int8_path"] == cpu_features().int8_path


def test_doctor_json_without_a_bundle() -> None:
    proc = _run("import malm.cli, sys; sys.argv = ['malm', 'doctor', '--json']\n"
                "try:\n    malm.cli.main()\nfinally:\n    print('torch imported:', 'torch' in sys.modules, file=sys.stderr)")
    assert proc.returncode == 0, proc.stderr
    assert "torch imported: False" in proc.stderr
    report = json.loads(proc.stdout)
    ort = report["onnxruntime"]
    assert ort["version"] == onnxruntime.__version__ and "CPUExecutionProvider" in ort["providers_available"]
    assert ort["provider_order"][-1] == "CPUExecutionProvider" and ort["error"] is None
    assert set(report["cpu"]) >= {"flags", "int8_path", "machine", "source"}
    assert report["tensorrt"]["ort_provider"] is False and report["coreml"]["macos"] is False
    assert report["problems"] == []


def test_doctor_with_a_bundle_shows_the_choice_and_why(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    report = doctor_report(bundle)
    b = report["bundle"]
    assert b["backend"] == "onnxruntime" and b["device"] == "CPUExecutionProvider"
    assert b["providers"] == ["CPUExecutionProvider"]
    assert b["variant"] == "int8" and "int8_cpu" not in b["variants_present"]
    # The bundle has no int8_cpu encoder, so auto on the CPU falls to int8, and says so.
    assert b["variant_reason"].startswith("auto on CPUExecutionProvider") and "no int8_cpu" in b["variant_reason"]
    assert b["verification"]["mode"] == "full" and b["verification"]["files"] > 3
    assert report["problems"] == []
    r = Retriever.load(bundle, variant="fp32", verify=False)
    info = r.info()
    assert info["variant"] == "fp32" and info["variant_reason"] == "asked for fp32"
    assert info["verification"]["mode"] == "off" and info["cpu"]["flags"] == list(cpu_features().flags)
    json.dumps(info)  # JSON-ready


def test_doctor_names_a_tampered_bundle(tmp_path: Path) -> None:
    b = make_bundle(tmp_path / "b", 8)
    enc = next((b / "encoders").glob("*.onnx"))
    data = bytearray(enc.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes: only the sha256 can tell
    enc.write_bytes(bytes(data))
    proc = _run(f"import malm.cli, sys; sys.argv = ['malm', 'doctor', '--bundle', {str(b)!r}]; malm.cli.main()",
                MALM_CACHE_DIR=str(tmp_path / "cache"))
    assert proc.returncode == 1
    assert "problem" in proc.stdout and "does not match its sha256" in proc.stdout.replace("\n", " ")


def test_gpu_without_a_cuda_provider_is_a_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diagnostics, "gpu_hints", lambda: {"nvidia_gpu": True, "jetson": True})
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    report = diagnostics.runtime_report()
    assert any("no CUDA provider" in p and "JetPack" in p for p in report["problems"])
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    report = diagnostics.runtime_report()
    assert report["problems"] == [] and report["tensorrt"]["ort_provider"] is True
    assert report["onnxruntime"]["provider_order"][0] == "TensorrtExecutionProvider"


def test_two_onnxruntime_packages_are_a_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    real = diagnostics._version
    monkeypatch.setattr(diagnostics, "_version", lambda d: "1.20.0" if d == "onnxruntime-gpu" else real(d))
    err = diagnostics.onnxruntime_info()["error"]
    assert "onnxruntime-gpu" in err and "overwrite each other" in err and "malm[gpu]" in err


NO_ORT = "import sys; sys.modules['onnxruntime'] = None\n"


def test_without_onnxruntime_a_clear_error_names_the_extras(bundle: Path) -> None:
    proc = _run(NO_ORT + f"""
import malm.sdk  # importing the SDK works without a runtime
from malm import Retriever
from malm.errors import MalmError
try:
    Retriever.load({str(bundle)!r})
except MalmError as e:
    print(e)
""")
    assert proc.returncode == 0, proc.stderr
    assert "ONNX Runtime is not installed" in proc.stdout
    assert "malm[cpu]" in proc.stdout and "malm[gpu]" in proc.stdout and "JetPack" in proc.stdout
    doctor = _run(NO_ORT + "import malm.cli; sys.argv = ['malm', 'doctor', '--json']; malm.cli.main()")
    assert doctor.returncode == 1
    report = json.loads(doctor.stdout)
    assert "malm[cpu]" in report["onnxruntime"]["error"] and report["problems"]


def test_pyproject_extras_per_device() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("onnxruntime") for d in project["dependencies"])
    extras = project["optional-dependencies"]
    assert extras["cpu"] == ["onnxruntime>=1.17"] and extras["gpu"] == ["onnxruntime-gpu>=1.17"]
    assert any(d.startswith("pillow-heif") for d in extras["heic"])
    # `make test` installs .[all,bench,dev]: it must bring the CPU runtime (and HEIC, which tests read).
    assert "cpu" in extras["all"][0] and "heic" in extras["all"][0]


FAKE_MSVCRT = """
import sys, types
sys.modules['fcntl'] = None  # as on Windows
import subprocess  # before the fake msvcrt, which would make the stdlib take its Windows path
calls = []
msvcrt = types.ModuleType('msvcrt')
msvcrt.LK_NBLCK, msvcrt.LK_UNLCK = 2, 0
msvcrt.locking = lambda fd, mode, n: calls.append((mode, n))
sys.modules['msvcrt'] = msvcrt
"""


def test_sdk_imports_and_bundle_lock_works_without_fcntl(tmp_path: Path) -> None:
    proc = _run(FAKE_MSVCRT + f"""
import malm.sdk, malm.cli, malm.commands.doctor
from malm.bundle import BundleWriter
with BundleWriter({str(tmp_path / 'b')!r}) as bw:
    bw.manifest['note'] = 'x'
print(calls)
""")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[(2, 1), (0, 1)]"  # locked byte 0, then unlocked it


def test_lock_is_exclusive_between_processes(tmp_path: Path) -> None:
    from malm._lock import try_lock, unlock

    path = tmp_path / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        assert try_lock(fd)
        other = _run(f"import os; from malm._lock import try_lock; print(try_lock(os.open({str(path)!r}, os.O_RDWR)))")
        assert other.stdout.strip() == "False"
        unlock(fd)
        other = _run(f"import os; from malm._lock import try_lock; print(try_lock(os.open({str(path)!r}, os.O_RDWR)))")
        assert other.stdout.strip() == "True"
    finally:
        os.close(fd)
