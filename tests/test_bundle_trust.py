"""Bundles a device can trust: each attack of docs/reliability.md ("Threat model") as a regression test.

Signed manifests (Ed25519), hashing without shortcuts (ctime-bound stamps, every opened file listed, bytes
read once), crafted hnswlib index files, and manifest numbers / store rows out of bounds: every one is
refused with a one-line `BundleError`, never another exception or a crash of the process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _sdk_bundle import make_bundle, photo

from malm.bundle import BundleWriter, read_manifest, sha256_path, verify
from malm.edge_index import hnsw_file
from malm.errors import BundleError, MalmError
from malm.sdk import Retriever
from malm.sdk.bundle_loader import open_bundle
from malm.signing import SIGNATURE, keygen, sign_bundle

ROOT = Path(__file__).parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("trust") / "bundle", 40)


@pytest.fixture
def bundle(source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MALM_CACHE_DIR", str(tmp_path / "cache"))
    for var in ("MALM_REQUIRE_SIGNATURE", "MALM_TRUSTED_KEYS"):
        monkeypatch.delenv(var, raising=False)
    return Path(shutil.copytree(source, tmp_path / "b"))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    priv, pub = keygen(d / "release")
    other_priv, other_pub = keygen(d / "other")
    return {"key": priv, "pub": pub, "other_key": other_priv, "other_pub": other_pub}


def _edit(root: Path, fn: Callable[[dict[str, Any]], None]) -> None:
    m = json.loads((root / "manifest.json").read_text())
    fn(m)
    (root / "manifest.json").write_text(json.dumps(m))


def _age(root: Path) -> None:
    """Make every file old enough to be stamped (stamps skip files changed within the clock's tick)."""
    for f in root.rglob("*"):
        st = f.stat()
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns - 10_000_000_000))
    time.sleep(0.3)


def _one_line(e: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "malm.cli", *args], capture_output=True, text=True, env=ENV,
                          timeout=120)


# signatures ----------------------------------------------------------------------------------------------
def test_keygen_writes_a_private_key_only_its_owner_reads(keys: dict[str, Path]) -> None:
    assert keys["key"].stat().st_mode & 0o777 == 0o600
    assert b"PUBLIC KEY" in keys["pub"].read_bytes()
    with pytest.raises(MalmError, match="already exists"):
        keygen(keys["key"].with_suffix(""))


def test_signed_bundle_loads_with_its_key_and_says_who_signed(bundle: Path, keys: dict[str, Path]) -> None:
    sig, kid = sign_bundle(bundle, keys["key"])
    assert sig == bundle / SIGNATURE
    r = Retriever.load(bundle, trusted_keys=[keys["pub"]])
    assert r.info()["verification"]["signed_by"] == kid
    assert r.search(photo(3), k=1)[0].recipe_id == "rec0003"
    r.close()


def test_unsigned_or_wrongly_signed_is_refused_when_a_signature_is_required(bundle: Path, keys: dict[str, Path],
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    Retriever.load(bundle).close()  # an old (unsigned) bundle loads as before when nobody asks for a signature
    with pytest.raises(BundleError, match="is not signed") as e:
        Retriever.load(bundle, trusted_keys=[keys["pub"]])
    _one_line(e)
    sign_bundle(bundle, keys["other_key"])
    with pytest.raises(BundleError, match="not trusted") as e:
        Retriever.load(bundle, trusted_keys=[keys["pub"]])
    _one_line(e)
    sign_bundle(bundle, keys["key"])
    _edit(bundle, lambda m: m["index"].update(ef_search=100))  # any change after signing
    with pytest.raises(BundleError, match="does not match manifest.json") as e:
        Retriever.load(bundle, trusted_keys=[keys["pub"]])
    _one_line(e)
    # A signature never trusted by a key is refused too; a file changed under a signed manifest by its hash.
    sign_bundle(bundle, keys["key"])
    monkeypatch.setenv("MALM_TRUSTED_KEYS", str(keys["pub"]))
    Retriever.load(bundle).close()
    (bundle / SIGNATURE).write_text('{"format": "malm-bundle-signature", "version": 1, "signatures": "x"}')
    with pytest.raises(BundleError, match="not a malm bundle signature"):
        Retriever.load(bundle)
    monkeypatch.delenv("MALM_TRUSTED_KEYS")
    monkeypatch.setenv("MALM_REQUIRE_SIGNATURE", "1")
    with pytest.raises(MalmError, match="no trusted key"):
        Retriever.load(bundle)


def test_signed_file_tampered_is_refused_by_its_hash(bundle: Path, keys: dict[str, Path]) -> None:
    sign_bundle(bundle, keys["key"])
    enc = bundle / "encoders/image_fp32.onnx"
    data = bytearray(enc.read_bytes())
    data[-3] ^= 0x01
    enc.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match its sha256"):
        Retriever.load(bundle, trusted_keys=[keys["pub"]])
    with pytest.raises(MalmError, match="does not match its sha256"):
        sign_bundle(bundle, keys["key"])  # nothing is signed that does not verify


def test_cli_sign_and_query_with_trusted_key(bundle: Path, keys: dict[str, Path], tmp_path: Path) -> None:
    out = _cli("bundle", "keygen", "--out", str(tmp_path / "k"))
    assert out.returncode == 0 and (tmp_path / "k.key").is_file(), out.stderr
    photo(5).save(tmp_path / "p.png")
    unsigned = _cli("query", str(tmp_path / "p.png"), "--bundle", str(bundle), "--trusted-key",
                    str(tmp_path / "k.pub"), "--json")
    assert unsigned.returncode == 2 and "is not signed" in unsigned.stderr
    assert len(unsigned.stderr.strip().splitlines()) == 1 and "Traceback" not in unsigned.stderr
    assert _cli("bundle", "sign", str(bundle), "--key", str(tmp_path / "k.key")).returncode == 0
    ok = _cli("query", str(tmp_path / "p.png"), "--bundle", str(bundle), "--trusted-key", str(tmp_path / "k.pub"),
              "--json", "-k", "1")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["results"][0]["hits"][0]["recipe_id"] == "rec0005"
    wrong = _cli("query", str(tmp_path / "p.png"), "--bundle", str(bundle), "--trusted-key", str(keys["pub"]))
    assert wrong.returncode == 2 and "not trusted" in wrong.stderr and len(wrong.stderr.strip().splitlines()) == 1


# hashing without shortcuts ---------------------------------------------------------------------------------
def test_rewrite_with_restored_mtime_is_caught(bundle: Path) -> None:
    """The attack: one query stamps the bundle; rewrite the encoder in place, `touch -r` its old mtime back.
    ctime (which only the kernel sets) is in the stamp, so the next load hashes again and refuses it."""
    _age(bundle)
    Retriever.load(bundle).close()
    Retriever.load(bundle).close()  # stamped: no hashing now
    enc = bundle / "encoders/image_fp32.onnx"
    st = enc.stat()
    data = bytearray(enc.read_bytes())
    data[-3] ^= 0x01
    with open(enc, "r+b") as f:  # in place: same inode, same size
        f.write(bytes(data))
    os.utime(enc, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert enc.stat().st_mtime_ns == st.st_mtime_ns and enc.stat().st_ino == st.st_ino
    with pytest.raises(BundleError, match="image_fp32.onnx does not match its sha256") as e:
        Retriever.load(bundle)
    _one_line(e)


def test_remembered_selfcheck_is_bound_to_the_verified_encoder(bundle: Path) -> None:
    _age(bundle)
    with Retriever.load(bundle) as r:
        assert r.self_check is not None and r.self_check.status == "passed" and not r.self_check.remembered
    with Retriever.load(bundle) as r:
        assert r.self_check is not None and r.self_check.remembered
    # Without verification the encoder's bytes are unknown: nothing remembered is used for them.
    with Retriever.load(bundle, verify=False) as r:
        assert r.self_check is not None and not r.self_check.remembered


def test_file_changed_while_hashing_is_refused(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import malm.bundle as bundle_mod

    real = bundle_mod.sha256_path
    target = bundle / "encoders/image_fp32.onnx"

    def racing(p: Path) -> tuple[str, int]:
        out = real(p)
        if p == target.resolve():
            os.utime(target)  # the file changes after its bytes were read, before the stamp
        return out

    monkeypatch.setattr(bundle_mod, "sha256_path", racing)
    with pytest.raises(BundleError, match="changed while being verified"):
        open_bundle(bundle)


def test_file_changed_after_verification_is_not_read(bundle: Path) -> None:
    b = open_bundle(bundle)
    store = b.index.store
    (bundle / store).write_bytes((bundle / store).read_bytes())  # same bytes, but written after the check
    with pytest.raises(BundleError, match="changed after it was verified"):
        b.read_bytes(store)
    time.sleep(0.01)
    b.read_bytes(b.index.file)  # untouched files still read
    b.unchanged_path("encoders/image_fp32.onnx")  # what TensorRT / CoreML get: a path, checked unchanged
    os.utime(bundle / "encoders/image_fp32.onnx")
    with pytest.raises(BundleError, match="changed after it was verified"):
        b.unchanged_path("encoders/image_fp32.onnx")


def test_unlisted_encoder_is_refused_even_without_selfcheck(bundle: Path) -> None:
    def drop(m: dict[str, Any]) -> None:
        m.pop("selfcheck")
        m["files"].pop("encoders/image_fp32.onnx")
    _edit(bundle, drop)
    with pytest.raises(BundleError, match="encoder 'image_fp32' 'encoders/image_fp32.onnx' is not listed"):
        Retriever.load(bundle)
    with pytest.raises(BundleError, match="is not listed"):
        verify(bundle)  # what `malm bundle info --verify` runs
    with pytest.raises(BundleError, match="is not listed"):
        Retriever.load(bundle, verify=False)
    out = _cli("bundle", "info", str(bundle), "--verify")
    assert out.returncode == 2 and "is not listed" in out.stderr and "hashes verified" not in out.stdout


def test_symlink_inside_a_model_directory_is_refused(tmp_path: Path) -> None:
    pkg = tmp_path / "m.mlpackage"
    (pkg / "Data").mkdir(parents=True)
    (pkg / "Data" / "weights.bin").write_bytes(b"w")
    (pkg / "Data" / "leak").symlink_to("/etc/hostname")
    with pytest.raises(BundleError, match="symbolic link"):
        sha256_path(pkg)


def test_lock_symlink_is_not_followed(bundle: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    (bundle / ".lock").unlink(missing_ok=True)
    (bundle / ".lock").symlink_to(outside)
    with pytest.raises(BundleError, match="lock file"):
        with BundleWriter(bundle):
            pass
    assert not outside.exists()


# crafted hnswlib index files --------------------------------------------------------------------------------
def _index_parts(data: bytes) -> tuple[tuple[Any, ...], int]:
    head = hnsw_file.HEADER.unpack_from(data)
    return head, head[3]  # (fields, size_data_per_element)


def _set_header(data: bytearray, field: int, value: Any) -> None:
    fields = list(hnsw_file.HEADER.unpack_from(data))
    fields[field] = value
    hnsw_file.HEADER.pack_into(data, 0, *fields)


def _level0(data: bytearray, element: int, offset: int, value: int, fmt: str = "<I") -> None:
    import struct

    per = hnsw_file.HEADER.unpack_from(data)[3]
    struct.pack_into(fmt, data, hnsw_file.HEADER.size + element * per + offset, value)


def _first_upper(data: bytes) -> tuple[int, int]:
    """(element, offset of its first upper-level block) of the first element on level >= 1."""
    import struct

    head = hnsw_file.HEADER.unpack_from(data)
    pos = hnsw_file.HEADER.size + head[2] * head[3]
    for i in range(head[2]):
        (size,) = struct.unpack_from("<I", data, pos)
        if size:
            return i, pos + 4
        pos += 4
    raise AssertionError("no element above level 0")


def _neighbour_past_end(d: bytearray) -> None:
    _level0(d, 0, 0, 1)
    _level0(d, 0, 4, 10_000_000)


def _too_many_links(d: bytearray) -> None:
    _level0(d, 1, 0, 0xFFFF)


def _upper_neighbour_on_level0(d: bytearray) -> None:
    import struct

    i, off = _first_upper(bytes(d))
    levels = []
    head = hnsw_file.HEADER.unpack_from(d)
    pos = hnsw_file.HEADER.size + head[2] * head[3]
    for _ in range(head[2]):
        (size,) = struct.unpack_from("<I", d, pos)
        levels.append(size)
        pos += 4 + size
    flat = levels.index(0)
    struct.pack_into("<HH I", d, off, 1, 0, flat)


def _enterpoint_past_end(d: bytearray) -> None:
    _set_header(d, 7, 4_000_000_000)


def _maxlevel_too_high(d: bytearray) -> None:
    _set_header(d, 6, 40)


def _capacity_huge(d: bytearray) -> None:
    _set_header(d, 1, 2**40)


def _count_above_file(d: bytearray) -> None:
    _set_header(d, 2, hnsw_file.HEADER.unpack_from(d)[2] + 5)


def _layout_shifted(d: bytearray) -> None:
    _set_header(d, 3, hnsw_file.HEADER.unpack_from(d)[3] + 4)


CRAFTED: dict[str, Callable[[bytearray], None]] = {
    "neighbour_past_end": _neighbour_past_end, "too_many_links": _too_many_links,
    "upper_neighbour_on_level0": _upper_neighbour_on_level0, "enterpoint_past_end": _enterpoint_past_end,
    "maxlevel_too_high": _maxlevel_too_high, "capacity_huge": _capacity_huge, "count_above_file": _count_above_file,
    "layout_shifted": _layout_shifted,
}


def _craft(bundle: Path, fn: Callable[[bytearray], None]) -> None:
    """Rewrite the index file and its manifest entry (size and sha256) as an attacker who owns the bundle would."""
    m = read_manifest(bundle)
    rel = m["index"]["file"]
    data = bytearray((bundle / rel).read_bytes())
    fn(data)
    (bundle / rel).write_bytes(bytes(data))
    digest, size = sha256_path(bundle / rel)
    _edit(bundle, lambda mm: mm["files"][rel].update(sha256=digest, bytes=size))


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_crafted_index_is_refused_in_a_live_process(bundle: Path, name: str) -> None:
    """Each crafted file loads and searches in a child process: hnswlib would SIGSEGV on most of them; the
    checks before it must refuse every one with a BundleError (exit 2 from the CLI, one line)."""
    _craft(bundle, CRAFTED[name])
    photo(1).save(bundle.parent / "p.png")
    out = _cli("query", str(bundle.parent / "p.png"), "--bundle", str(bundle), "--json")
    assert out.returncode == 2, (out.returncode, out.stderr[-500:])
    assert "index" in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_crafted_index_is_refused_when_read_through_the_open_file(bundle: Path) -> None:
    """A stamped, old bundle: the index is checked and handed to hnswlib through the same open file (no copy);
    a crafted one is refused there too (in a child process: a miss would crash it)."""
    _craft(bundle, CRAFTED["upper_neighbour_on_level0"])
    _age(bundle)
    photo(1).save(bundle.parent / "p.png")
    for _ in range(2):  # the first load stamps the files, the second reads the index through open_stable
        out = _cli("query", str(bundle.parent / "p.png"), "--bundle", str(bundle), "--json")
        assert out.returncode == 2 and "not on that level" in out.stderr, (out.returncode, out.stderr[-500:])


def test_index_is_read_through_the_open_file_when_it_is_stamped(bundle: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from malm.edge_index.hnsw import HnswIndex

    used: list[str] = []
    real_file, real_bytes = HnswIndex.load_file.__func__, HnswIndex.load_bytes.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(HnswIndex, "load_file", classmethod(lambda c, *a: used.append("file") or real_file(c, *a)))
    monkeypatch.setattr(HnswIndex, "load_bytes", classmethod(lambda c, *a: used.append("bytes") or real_bytes(c, *a)))
    Retriever.load(bundle).close()  # files written moments ago: read as bytes, hashed again
    _age(bundle)
    Retriever.load(bundle).close()
    with Retriever.load(bundle) as r:
        assert r.search(photo(7), k=1)[0].recipe_id == "rec0007"
    assert used[0] == "bytes" and used[-1] == "file", used


def test_valid_index_passes_the_checks(bundle: Path) -> None:
    m = read_manifest(bundle)
    data = (bundle / m["index"]["file"]).read_bytes()
    head = hnsw_file.validate(data, "x", m["index"]["dim"], m["index"]["M"])
    assert head.count == m["index"]["count"] and not head.deleted.any()


# numbers out of bounds, wrong types, bad rows ------------------------------------------------------------------
def _deep(m: dict[str, Any]) -> None:
    v: Any = 1
    for _ in range(200):
        v = [v]
    m["model"] = {"x": v}


MANIFEST_ATTACKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "max_elements_huge": lambda m: m["index"].update(max_elements=30_000_000),
    "max_elements_2_64": lambda m: m["index"].update(max_elements=2**64),
    "ef_search_2_64": lambda m: m["index"].update(ef_search=2**64 + 1),
    "resize_1e9": lambda m: m["preprocess"].update(resize=1_000_000_000),
    "max_pixels_huge": lambda m: m["preprocess"].update(max_pixels=2**62),
    "dim_huge": lambda m: m["embedding"].update(dim=10**9),
    "min_cosine_negative": lambda m: m["selfcheck"].update(min_cosine=-1),
    "min_cosine_zero": lambda m: m["selfcheck"].update(min_cosine=0),
    "quality_list": lambda m: m.update(quality={"int8": [1, 2]}),
    "long_string": lambda m: m.update(created="x" * (2 << 20)),
    "deep_nesting": _deep,
    "M_huge": lambda m: m["index"].update(M=5000),
    "mean_huge": lambda m: m["preprocess"].update(mean=[1e308, 0.4, 0.4]),
    "std_tiny": lambda m: m["preprocess"].update(std=[1e-300, 0.2, 0.2]),
}


@pytest.mark.parametrize("name", sorted(MANIFEST_ATTACKS))
def test_manifest_numbers_out_of_bounds_are_bundle_errors(bundle: Path, name: str) -> None:
    _edit(bundle, MANIFEST_ATTACKS[name])
    with pytest.raises(BundleError) as e:
        Retriever.load(bundle)
    _one_line(e)


def test_manifest_json_parse_failures_are_bundle_errors(bundle: Path) -> None:
    text = (bundle / "manifest.json").read_text()
    for bad in (text.replace('"format_version": 1', '"format_version": 1' + "0" * 5000),
                '{"a": ' * 100_000 + "1" + "}" * 100_000):
        (bundle / "manifest.json").write_text(bad)
        with pytest.raises(BundleError) as e:
            Retriever.load(bundle)
        _one_line(e)


def test_bundle_info_with_a_list_for_quality_is_one_line(bundle: Path) -> None:
    _edit(bundle, lambda m: m.update(quality={"image_fp32": ["R@1"]}))
    out = _cli("bundle", "info", str(bundle))
    assert out.returncode == 2 and "quality.image_fp32" in out.stderr and "Traceback" not in out.stderr


def _store_rows(bundle: Path, sql: str) -> None:
    import sqlite3

    m = read_manifest(bundle)
    rel = m["index"]["store"]
    with sqlite3.connect(bundle / rel) as conn:
        conn.execute(sql)
    digest, size = sha256_path(bundle / rel)
    _edit(bundle, lambda mm: mm["files"][rel].update(sha256=digest, bytes=size))


@pytest.mark.parametrize("sql", [
    "UPDATE recipes SET ingredients = 'not json'",
    "UPDATE recipes SET instructions = '{\"a\": 1}'",
    "UPDATE recipes SET title = x'ff00'",
    "UPDATE recipes SET tags = '[1, 2]'",
    "UPDATE recipes SET names = '[[[' ",
    "UPDATE recipes SET id = '' WHERE id = 'rec0002'",
    "UPDATE recipes SET title = CAST(x'41ff80' AS TEXT)",
])
def test_bad_store_rows_are_bundle_errors_at_search(bundle: Path, sql: str) -> None:
    _store_rows(bundle, sql)
    with Retriever.load(bundle) as r:
        with pytest.raises(BundleError, match="recipe store .*(column|valid recipe)") as e:
            r.search(photo(2), k=3, exclude_ingredients=["peanut butter"] if "names" in sql else ())
        _one_line(e)


def test_store_is_read_from_the_verified_bytes(bundle: Path) -> None:
    """After load, rewriting the store file changes nothing the retriever answers (it reads its own copy)."""
    with Retriever.load(bundle) as r:
        before = [h.title for h in r.search(photo(4), k=3)]
        _store_rows(bundle, "UPDATE recipes SET title = 'tampered'")
        assert [h.title for h in r.search(photo(4), k=3)] == before


def test_model_card_keeps_manifest_text_inert(bundle: Path) -> None:
    from malm.model_card import render_card

    m = read_manifest(bundle)
    evil = "x</td><script>alert(1)</script>\n# [click](http://evil.example) ![i](http://t) `| a |"
    m["model"] = {"name": evil, "checkpoint_sha256": "`x"}
    m["encoders"]["image_fp32"]["file"] = "a|b`c"
    card = render_card(m, {"data": evil, "notes": [evil]})
    assert "<script>" not in card and not re.search(r"(?<!\\)\]\(", card) and "\n# [" not in card
    assert "a|b" not in card and "&lt;script&gt;" in card
