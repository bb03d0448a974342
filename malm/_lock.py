"""A portable, non-blocking exclusive file lock: `fcntl.flock` on POSIX, `msvcrt.locking` on Windows.

Stdlib only and nothing platform-specific imported at the top level of any module that uses it, so
`import malm.sdk` works wherever the SDK claims to (Linux, macOS, Windows).
"""

from __future__ import annotations

import os
from types import ModuleType


def _import(name: str) -> ModuleType | None:
    try:
        return __import__(name)
    except ImportError:
        return None


def try_lock(fd: int) -> bool:
    """Take an exclusive lock on open file `fd` without waiting; False when another process holds it.

    Where neither lock exists (an exotic platform) we run unlocked: writers still commit by atomic rename,
    so readers stay safe; only two concurrent writers could lose one's update.
    """
    fcntl = _import("fcntl")
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    msvcrt = _import("msvcrt")
    if msvcrt is not None:
        # msvcrt locks a byte range from the current position: always byte 0, so every process agrees.
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    return True


def unlock(fd: int) -> None:
    fcntl = _import("fcntl")
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return
    msvcrt = _import("msvcrt")
    if msvcrt is not None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
