"""Content-addressed on-disk store of per-text embeddings (stdlib ``sqlite3``).

One SQLite database per cache directory holds one row per (namespace, text):

- the *namespace* is a digest of everything besides the text that determines the
  vector: the member's fingerprint (a hash of its weights and configuration), the
  prompt, the maximum sequence length and the storage format version;
- the *key* is a 128-bit BLAKE2b digest of the UTF-8 text;
- the row stores the vector's length, dtype and a CRC-32 of (namespace, key, vector).

Why SQLite: it is in the standard library, its transactions are atomic and durable, and
with write-ahead logging (WAL) several processes can read while one writes; a process
killed mid-transaction leaves nothing behind (the transaction rolls back on the next
open). The checksum catches what SQLite cannot see (a row overwritten by a buggy writer,
bit rot): such a row is reported as missing, recomputed by the caller and overwritten;
it is never returned. Lookups are batched (hundreds of keys per query) so a warm cache
serves tens of thousands of vectors per second.

WAL needs shared memory between the processes, so the directory must be on a local
file system (not NFS/SMB).
"""

import hashlib
import os
import sqlite3
import time
import zlib
from pathlib import Path

import numpy as np

__all__ = ["CACHE_FILENAME", "CacheUnavailableError", "EmbeddingCache"]

#: File name of the database inside ``cache_dir``; the suffix is the format version.
CACHE_FILENAME = "embeddings-v1.sqlite3"
_FORMAT = b"skfusion-embedding-cache-v1"
_DTYPE = "<f4"
# Keys per SELECT: well below SQLite's historic 999 host-parameter limit.
_CHUNK = 900

_SCHEMA = """
CREATE TABLE IF NOT EXISTS embedding (
    namespace BLOB NOT NULL,
    key BLOB NOT NULL,
    dim INTEGER NOT NULL,
    dtype TEXT NOT NULL,
    checksum INTEGER NOT NULL,
    vector BLOB NOT NULL,
    UNIQUE (namespace, key)
)
"""


class CacheUnavailableError(RuntimeError):
    """The cache database cannot be opened, read or written (corrupt, locked, ...)."""


def namespace(*parts):
    """Digest identifying everything but the text that determines a vector.

    Parameters
    ----------
    *parts : str or bytes
        Fingerprint, prompt, settings; order matters.

    Returns
    -------
    bytes
        A 16-byte digest.
    """
    h = hashlib.blake2b(_FORMAT, digest_size=16)
    for part in parts:
        data = part.encode("utf-8", "surrogatepass") if isinstance(part, str) else part
        # Length-prefix each part so ("ab", "c") and ("a", "bc") differ.
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.digest()


def text_keys(texts):
    """16-byte BLAKE2b digests of the UTF-8 encoded texts (lone surrogates allowed)."""
    blake = hashlib.blake2b
    return [
        blake(t.encode("utf-8", "surrogatepass"), digest_size=16).digest() for t in texts
    ]


def _checksum(space, key, blob):
    return zlib.crc32(blob, zlib.crc32(key, zlib.crc32(space)))


class EmbeddingCache:
    """A handle on the embedding database in ``cache_dir`` (created if needed).

    Parameters
    ----------
    cache_dir : str or os.PathLike
        Directory of the database; created (with parents) if missing.
    timeout : float, default=60.0
        Seconds to wait for another process's write lock before giving up.

    Raises
    ------
    CacheUnavailableError
        If the directory cannot be created or the database cannot be opened
        (for example a file that is not an SQLite database).
    """

    def __init__(self, cache_dir, timeout=60.0):
        self.path = Path(cache_dir) / CACHE_FILENAME
        try:
            os.makedirs(cache_dir, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
            self._conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            self._setup(timeout)
        except (OSError, sqlite3.Error) as exc:
            raise CacheUnavailableError(
                f"cannot open the embedding cache {self.path}: {exc}"
            ) from exc

    def _setup(self, timeout):
        # Switching to WAL takes a short exclusive lock; the busy handler does not
        # always apply to it, so retry briefly when another process holds the lock.
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._conn.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        # NORMAL is durable against a killed process in WAL mode (only an OS crash
        # can drop the last commits, and never corrupts the database).
        self._conn.execute("PRAGMA synchronous = NORMAL")
        self._conn.execute(_SCHEMA)

    def close(self):
        """Close the connection (the handle cannot be used afterwards)."""
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def get(self, space, keys, dim):
        """Look up vectors; return which keys were found, valid, and their values.

        Parameters
        ----------
        space : bytes
            Namespace digest from :func:`namespace`.
        keys : list of bytes
            Text digests from :func:`text_keys`; must be unique.
        dim : int
            Expected vector length. A stored row with another length, dtype or a
            checksum mismatch counts as missing (the caller recomputes and
            overwrites it).

        Returns
        -------
        found : ndarray of bool, shape (len(keys),)
        values : ndarray of float32, shape (len(keys), dim)
            Rows where ``found`` is False are zeros.
        n_invalid : int
            Number of stored rows rejected by the checks.
        """
        n = len(keys)
        values = np.zeros((n, dim), dtype=np.float32)
        found = np.zeros(n, dtype=bool)
        position = {k: i for i, k in enumerate(keys)}
        rows, blobs, n_invalid = [], [], 0
        nbytes = dim * 4
        try:
            for start in range(0, n, _CHUNK):
                chunk = keys[start : start + _CHUNK]
                query = (
                    "SELECT key, dim, dtype, checksum, vector FROM embedding "
                    "WHERE namespace = ? AND key IN (" + ",".join("?" * len(chunk)) + ")"
                )
                for key, d, dtype, crc, blob in self._conn.execute(query, (space, *chunk)):
                    if (
                        d != dim
                        or dtype != _DTYPE
                        or len(blob) != nbytes
                        or _checksum(space, key, blob) != crc
                    ):
                        n_invalid += 1
                        continue
                    rows.append(position[key])
                    blobs.append(blob)
        except sqlite3.Error as exc:
            raise CacheUnavailableError(
                f"cannot read the embedding cache {self.path}: {exc}"
            ) from exc
        if rows:
            values[rows] = np.frombuffer(b"".join(blobs), dtype=_DTYPE).reshape(-1, dim)
            found[rows] = True
        return found, values, n_invalid

    def put(self, space, keys, values):
        """Store (or overwrite) vectors in one atomic transaction.

        Parameters
        ----------
        space : bytes
            Namespace digest from :func:`namespace`.
        keys : list of bytes
            Text digests, one per row of ``values``.
        values : array-like of shape (len(keys), dim)
            Vectors; stored as little-endian float32.
        """
        values = np.ascontiguousarray(values, dtype=_DTYPE)
        dim = values.shape[1]

        def rows():
            for key, row in zip(keys, values, strict=True):
                blob = row.tobytes()
                yield space, key, dim, _DTYPE, _checksum(space, key, blob), blob

        try:
            # BEGIN IMMEDIATE takes the write lock up front (waiting up to the busy
            # timeout) so the transaction cannot fail half-way on lock upgrade.
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "INSERT OR REPLACE INTO embedding VALUES (?, ?, ?, ?, ?, ?)", rows()
                )
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise CacheUnavailableError(
                f"cannot write to the embedding cache {self.path}: {exc}"
            ) from exc
