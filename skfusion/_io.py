"""Atomic file writes shared by persistence (models, indexes) and distributed (shards)."""

import os
import tempfile
from pathlib import Path

__all__ = ["write_atomically"]


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
