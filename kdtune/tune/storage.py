"""Ray storage locations: a local folder, or a URI (``s3://``, ``gs://``, ``file://``) that
every node of a cluster reaches, read and written through pyarrow's filesystems."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def is_uri(location: str | Path) -> bool:
    """``s3://...``, ``gs://...``, ``file://...``: storage reached through pyarrow, not a path."""
    return "://" in str(location)


def location_exists(location: Path | str) -> bool:
    """Whether a local path or a storage URI exists."""
    if not is_uri(location):
        return Path(location).exists()
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(str(location))
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def read_text(location: Path | str) -> str | None:
    """The text of a small file at a path or URI; None if there is none."""
    if not is_uri(location):
        path = Path(location)
        return path.read_text() if path.is_file() else None
    if not location_exists(location):
        return None
    import pyarrow.fs

    fs, key = pyarrow.fs.FileSystem.from_uri(str(location))
    with fs.open_input_stream(key) as f:
        return f.read().decode()


def write_text(location: Path | str, text: str) -> None:
    """Write a small file whole: locally through a temporary file and a rename (a reader never
    sees half of it), at a URI as one object."""
    if is_uri(location):
        import pyarrow.fs

        fs, key = pyarrow.fs.FileSystem.from_uri(str(location))
        with fs.open_output_stream(key) as f:
            f.write(text.encode())
        return
    path = Path(location)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
