"""One writer per output folder: a second run writing into the same folder refuses at once.

    with folder_lock(out):          # DIR/.emofast.lock, held until the block ends
        ...write into out...

The lock is an advisory `flock` on DIR/.emofast.lock, which the kernel drops when its process
dies, so a killed run never leaves a folder stuck (pip and HF datasets use the same kind of
lock). The file says who holds it, for the refusal's message. Re-entrant within a process: a
pipeline that locks a folder can run a sweep into the same folder.
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
from pathlib import Path
from typing import Iterator

LOCK_FILE = ".emofast.lock"
_held: dict[Path, int] = {}  # folder -> depth, for this process


class FolderBusy(OSError):
    """Another live process is writing into the folder."""


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold DIR/.emofast.lock for the block; raise FolderBusy if another process holds it."""
    folder = Path(folder).resolve()
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file: give an output folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create the output folder {folder}: {e.strerror}") from None
    if folder in _held:
        _held[folder] += 1
        try:
            yield folder
        finally:
            _held[folder] -= 1
        return
    try:
        import fcntl
    except ImportError:  # no flock (Windows): run unlocked rather than refuse every run
        yield folder
        return
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            raise FolderBusy(f"{folder} is being written by {holder}: wait for it to finish or "
                             "give another output folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} "
                      f"({' '.join(sys.argv[:3])})".encode(), 0)
        _held[folder] = 1
        try:
            yield folder
        finally:
            del _held[folder]
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the descriptor releases the flock
