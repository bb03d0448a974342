"""Crash files are private (0600 in a 0700 folder owned by the user), never written through a planted
symlink, and do not carry secrets from argv."""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from pathlib import Path

import pytest

import malm.cli as cli
from malm import crashlog
from malm.crashlog import redact_argv, write_crash_file

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX permissions and symlinks (Windows: profile folders)")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def tmpdir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private temp directory standing in for /tmp (tempfile caches its choice: set it directly)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def _boom(*args: object, **kwargs: object) -> None:
    raise ZeroDivisionError("a bug")


def test_crash_file_is_private_and_redacts_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MALM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MALM_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["malm", "bundle", "sign", "b/", "--key", "/home/me/signing.key",
                                      "--token=s3cr3t", "--bundle", "b/"])
    monkeypatch.setattr(cli, "app", _boom)
    with pytest.raises(SystemExit):
        cli.main()
    (crash,) = (tmp_path / "cache" / "crashes").iterdir()
    assert str(crash) in capsys.readouterr().err
    assert mode(crash) == 0o600 and mode(crash.parent) == 0o700
    text = crash.read_text()
    assert "signing.key" not in text and "s3cr3t" not in text
    assert "'--key', '<redacted>'" in text and "'--token=<redacted>'" in text and "'--bundle', 'b/'" in text
    assert "ZeroDivisionError: a bug" in text


def test_a_planted_symlink_in_the_temp_folder_is_not_followed(tmp_path: Path, tmpdir_env: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache is unwritable, so the fallback under $TMPDIR is used: someone planted its name as a symlink
    to a folder of theirs (or to a file they want overwritten). Nothing is written there."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("MALM_CACHE_DIR", str(blocker))  # crashes/ cannot be made under a file
    victim = tmp_path / "attacker"
    victim.mkdir()
    (tmpdir_env / f"malm-crashes-{os.getuid()}").symlink_to(victim, target_is_directory=True)
    path = write_crash_file("malm query", ["malm", "query"], "Traceback ...")
    assert path is not None and path.is_file() and not path.is_symlink()
    assert list(victim.iterdir()) == []
    assert path.parent.parent == tmpdir_env and path.parent.name.startswith("malm-crashes-")
    assert path.parent.resolve() != victim.resolve()
    assert mode(path) == 0o600 and mode(path.parent) == 0o700


def test_the_temp_fallback_is_private(tmp_path: Path, tmpdir_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("MALM_CACHE_DIR", str(blocker))
    path = write_crash_file("malm query", ["malm"], "tb")
    assert path is not None and path.parent == tmpdir_env / f"malm-crashes-{os.getuid()}"
    assert mode(path) == 0o600 and mode(path.parent) == 0o700


def test_a_folder_of_another_user_is_skipped(tmp_path: Path, tmpdir_env: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Both folders exist but (as far as malm can tell) belong to someone else: a fresh private one is made."""
    cache = tmp_path / "cache"
    (cache / "crashes").mkdir(parents=True)
    (tmpdir_env / "malm-crashes-4242").mkdir()
    monkeypatch.setenv("MALM_CACHE_DIR", str(cache))
    monkeypatch.setattr(os, "getuid", lambda: 4242)  # every folder this test made now looks foreign
    path = write_crash_file("malm query", ["malm"], "tb")
    assert path is not None and path.parent.parent == tmpdir_env
    assert path.parent.name not in ("crashes", "malm-crashes-4242")
    assert list((cache / "crashes").iterdir()) == [] and list((tmpdir_env / "malm-crashes-4242").iterdir()) == []


def test_an_old_world_readable_folder_is_made_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "crashes"
    folder.mkdir()
    folder.chmod(0o755)  # what an older malm left with the default umask
    monkeypatch.setenv("MALM_CACHE_DIR", str(tmp_path))
    path = write_crash_file("malm x", ["malm"], "tb")
    assert path is not None and path.parent == folder and mode(folder) == 0o700 and mode(path) == 0o600


def test_a_symlink_at_the_file_name_is_not_followed(tmp_path: Path) -> None:
    folder = tmp_path / "crashes"
    folder.mkdir(mode=0o700)
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (folder / "name.txt").symlink_to(target)
    fd = os.open(folder, os.O_RDONLY)
    try:
        with pytest.raises(OSError):
            crashlog._write_new(folder, "name.txt", b"tb", fd)
    finally:
        os.close(fd)
    assert target.read_text() == "keep me"


def test_redact_argv() -> None:
    argv = ["malm", "query", "p.jpg", "--bundle", "b", "--trusted-key", "pub.pem", "--key=k", "--private-key",
            "x", "--api-token", "t", "--password", "pw", "-k", "5", "--keygen-out", "o"]
    assert redact_argv(argv) == ["malm", "query", "p.jpg", "--bundle", "b", "--trusted-key", "<redacted>",
                                 "--key=<redacted>", "--private-key", "<redacted>", "--api-token", "<redacted>",
                                 "--password", "<redacted>", "-k", "5", "--keygen-out", "o"]
