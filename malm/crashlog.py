"""Crash files: where `malm` writes the traceback of a bug, readable by the user who ran it and no one else.

    path = write_crash_file("malm query", sys.argv, traceback.format_exc())   # None if nowhere is writable

The folder is `$MALM_CACHE_DIR/crashes` (default `~/.cache/malm/crashes`), else a per-user folder under the
temp directory. Both are shared-machine safe: a folder is used only if it is a real directory (not a
symlink) owned by this user, and is made private (0700); the file is created new (O_EXCL) without following
a symlink (O_NOFOLLOW), mode 0600. A planted `/tmp/malm-crashes-<uid>` symlink or a folder another user
made is skipped, never written through. Values of options that name secrets (`--key`, `--token`…) are
written as `<redacted>`: a crash file is for a bug report, and people paste those.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import stat
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["crash_folders", "redact_argv", "write_crash_file"]

# An option whose value is (or names) a secret: --key, --private-key, --trusted-key, --token, --password…
_SECRET_OPTION = re.compile(r"^--?[\w-]*(key|token|secret|passw(or)?d|credential)s?$", re.IGNORECASE)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


def redact_argv(argv: Sequence[str]) -> list[str]:
    """argv with the value of every secret-naming option replaced: `--key k.pem` and `--key=k.pem` alike."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append("<redacted>")
            hide_next = False
        elif "=" in arg and _SECRET_OPTION.match(arg.split("=", 1)[0]):
            out.append(arg.split("=", 1)[0] + "=<redacted>")
        else:
            out.append(arg)
            hide_next = bool(_SECRET_OPTION.match(arg))
    return out


def crash_folders() -> Iterator[Path]:
    """Where crash files go, in order of preference."""
    base = os.environ.get("MALM_CACHE_DIR") or str(Path.home() / ".cache" / "malm")
    yield Path(base) / "crashes"
    uid = os.getuid() if hasattr(os, "getuid") else 0
    yield Path(tempfile.gettempdir()) / f"malm-crashes-{uid}"


def _private_folder(folder: Path) -> int | None:
    """An fd of `folder` (created 0700 if missing) after checking it is ours and private; OSError otherwise.
    None on Windows (no directory fds there; the user's profile folders are private already)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    if os.name == "nt":
        return None
    fd = os.open(folder, os.O_RDONLY | _DIRECTORY | _NOFOLLOW)  # a symlink here fails (ELOOP / ENOTDIR)
    try:
        st = os.fstat(fd)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(f"{folder}: not a directory")
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise PermissionError(f"{folder}: owned by another user")
        if st.st_mode & 0o077 and hasattr(os, "fchmod"):
            os.fchmod(fd, 0o700)  # ours, but made by an older malm with the default umask
        return fd
    except BaseException:
        os.close(fd)
        raise


def write_crash_file(command: str, argv: Sequence[str], text: str) -> Path | None:
    """Write `text` (a traceback) to a new private file; its path, or None if no folder could take it."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"{stamp}-{os.getpid()}-{command.replace(' ', '-').replace(os.sep, '-')}.txt"
    body = f"{command} (argv: {redact_argv(argv)!r})\n\n{text}".encode("utf-8", "backslashreplace")
    for folder in crash_folders():
        try:
            dir_fd = _private_folder(folder)
        except OSError:
            continue  # not writable, a symlink, or another user's folder: never written through
        try:
            return _write_new(folder, name, body, dir_fd)
        except OSError:
            continue
        finally:
            if dir_fd is not None:
                os.close(dir_fd)
    try:  # both taken (e.g. someone planted the temp folder): a fresh private folder of our own
        folder = Path(tempfile.mkdtemp(prefix="malm-crashes-"))
        return _write_new(folder, name, body, None)
    except OSError:
        return None


def _write_new(folder: Path, name: str, body: bytes, dir_fd: int | None) -> Path:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_BINARY", 0)
    if dir_fd is not None and os.open in os.supports_dir_fd:
        fd = os.open(name, flags, 0o600, dir_fd=dir_fd)  # relative to the checked folder, not its path
    else:
        fd = os.open(folder / name, flags, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(body)
    return folder / name
