"""Where a command writes, checked before it starts working: a folder or file the user names
(``--out``, ``--config-out``) must be creatable and writable, or the command stops with one
line naming it -- without creating anything -- instead of failing after the work is done.
"""

from __future__ import annotations

import os
from pathlib import Path

from kdtune.errors import KdtuneError


def writable_folder(path: str | Path, flag: str = "--out") -> Path:
    """``path`` (``~`` expanded) if it is a folder this process can write in, or one it can
    create; else a one-line error. Creates nothing."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise KdtuneError(f"{flag} {path}: {folder} is a file, not a folder; give a folder")
    _check_creatable(folder, flag, str(path))
    return folder


def writable_file(path: str | Path, flag: str = "--out") -> Path:
    """``path`` (``~`` expanded) if this process can write it (its folder exists or can be
    created, and can be written); else a one-line error. Creates nothing."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise KdtuneError(f"{flag} {path} is a folder; give the file to write")
    _check_creatable(target.parent, flag, str(path))
    return target


def _check_creatable(folder: Path, flag: str, shown: str) -> None:
    """Walk up from ``folder`` to what exists: that must be a folder this process may write
    in (then ``folder`` exists or ``mkdir -p`` can make it)."""
    existing = folder.absolute()
    while not os.path.lexists(existing):
        existing = existing.parent
    if not existing.is_dir():
        what = "a broken link" if existing.is_symlink() and not existing.exists() else "a file"
        raise KdtuneError(f"{flag} {shown}: cannot be created, {existing} is {what}, not a "
                          "folder; give a path in a folder you can write to")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise KdtuneError(f"{flag} {shown}: no permission to write in {existing}; give a path "
                          "in a folder you can write to")
