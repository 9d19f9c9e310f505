"""Atomic file writes shared by persistence (models, indexes), distributed (shards) and
the ONNX / web exports (public files of a folder that may hold symlinks)."""

import os
import tempfile
from pathlib import Path

__all__ = ["real_dir", "write_atomically", "write_public"]


def write_atomically(path, write):
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it there.

    The temporary name is unique, so concurrent or retried writers (Dask retries a lost
    task) each leave the same complete file; an interrupted write leaves no partial one,
    and readers see the old file or the new one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_public(path, data):
    """Write ``data`` (bytes) to ``path`` atomically, readable by all (a web server).

    The rename replaces whatever ``path`` is (an older file, or a symlink itself) and
    never writes through a symlink to a file outside the folder.
    """

    def write(f):
        f.write(data)
        os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600: a web server must read it

    write_atomically(path, write)


def real_dir(path):
    """``path`` as a real folder: a symlink (or file) there is removed, not followed."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    path.mkdir(exist_ok=True)
    return path
