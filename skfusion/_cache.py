"""Content-addressed on-disk store of per-text embeddings (stdlib ``sqlite3``).

One SQLite database per cache directory holds one row per (namespace, text):

- the *namespace* is a digest of everything besides the text that determines the
  vector: the member's fingerprint (a hash of its weights and configuration), the
  prompt and query/document task, the maximum sequence length and the storage
  format version (the caller chooses the parts; see :func:`namespace`);
- the *key* is a 128-bit BLAKE2b digest of the UTF-8 text;
- the row stores the vector's length, dtype and a 64-bit checksum of (namespace,
  key, vector). Only finite vectors are stored; a stored one with NaN or infinity
  (written by an older version) is treated like one failing its checksum.

Why SQLite: it is in the standard library, its transactions are atomic and durable, and
with write-ahead logging (WAL) several processes can read while one writes; a process
killed mid-transaction leaves nothing behind (the transaction rolls back on the next
open). The checksum catches what SQLite cannot see (a row overwritten by a buggy writer,
bit rot): such a row is reported as missing, recomputed by the caller and overwritten;
it is never returned. Reads are batched, so a warm cache serves tens of thousands of
vectors per second: a request for much of a namespace
is one sequential range scan, a small one looks keys up hundreds at a time, and the
checksums are verified for all rows at once with numpy.

WAL needs shared memory between the processes, so the directory must be on a local
file system (not NFS/SMB).
"""

import contextlib
import hashlib
import os
import sqlite3
import time
from itertools import repeat
from pathlib import Path

import numpy as np

__all__ = [
    "CACHE_FILENAME",
    "CacheUnavailableError",
    "EmbeddingCache",
    "namespace",
    "text_keys",
]

#: File name of the database inside ``cache_dir``; the suffix is the format version.
CACHE_FILENAME = "embeddings-v1.sqlite3"
_FORMAT = b"skfusion-embedding-cache-v1"
_DTYPE = "<f4"
_KEY_BYTES = 16
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
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID
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
        blake(t.encode("utf-8", "surrogatepass"), digest_size=_KEY_BYTES).digest()
        for t in texts
    ]


def _coefficients(n):
    """``n`` fixed odd 64-bit multipliers (splitmix64 of 1..n)."""
    x = np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x | np.uint64(1)


def _checksums(space, key_words, vector_words):
    """Per-row 64-bit checksums of (namespace, key, vector), vectorised.

    A multilinear hash ``sum_j c_j * word_j + h(namespace) mod 2**64`` with fixed odd
    ``c_j`` over the 32-bit words of key and vector: any change to a single word
    always changes it (``c_j`` odd), other corruption with probability ~1 - 2**-32,
    and rows moved to another namespace or key fail. It detects accidents (torn or
    overwritten rows, bit rot), which is all a local cache needs, and costs one
    integer matrix-vector product instead of a Python call per row.
    """
    n_key, dim = key_words.shape[1], vector_words.shape[1]
    coef = _coefficients(n_key + dim)
    out = np.full(len(key_words), int.from_bytes(space[:8], "little"), np.uint64)
    step = 4096  # rows per block: bounds the uint64 temporary to a few MB
    for s in range(0, len(out), step):
        out[s : s + step] += key_words[s : s + step].astype(np.uint64) @ coef[:n_key]
        out[s : s + step] += vector_words[s : s + step].astype(np.uint64) @ coef[n_key:]
    # SQLite integers are signed 64-bit.
    return out.view(np.int64)


def _words(blobs, width):
    return np.frombuffer(b"".join(blobs), dtype="<u4").reshape(-1, width)


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
        # 16 KiB pages keep vectors up to ~1,000 float32 inside their b-tree cell (no
        # overflow pages) in the WITHOUT ROWID table; only applies to a new file.
        self._conn.execute("PRAGMA page_size = 16384")
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

    def get(self, space, keys, out):
        """Look up vectors, writing the valid ones found into ``out``.

        Parameters
        ----------
        space : bytes
            Namespace digest from :func:`namespace`.
        keys : list of bytes
            Text digests from :func:`text_keys`; must be unique.
        out : ndarray of float32, shape (len(keys), dim)
            Receives the vector of every key found (a view, e.g. one member's
            column block of a larger array, is fine); other rows are left as they
            are. A stored row of another width or dtype, failing its checksum, or
            holding NaN or infinity, counts as missing (the caller recomputes and
            overwrites it).

        Returns
        -------
        found : ndarray of bool, shape (len(keys),)
            Which rows of ``out`` were filled.
        n_invalid : int
            Number of stored rows of the right width rejected by the checksum,
            finiteness, blob-length or type checks.
        """
        n, dim = out.shape
        if len(keys) != n:
            raise ValueError(f"{len(keys)} keys for an output of {n} rows")
        found = np.zeros(n, dtype=bool)
        if n == 0:
            return found, 0
        # Rows of another width or dtype are filtered in SQL (they count as missing).
        where = "namespace = ? AND dim = ? AND dtype = ?"
        select = "SELECT key, checksum, vector FROM embedding WHERE " + where
        try:
            (stored,) = self._conn.execute(
                "SELECT count(*) FROM embedding WHERE " + where, (space, dim, _DTYPE)
            ).fetchone()
            if stored == 0:
                return found, 0
            if 2 * n >= stored:
                # Asking for much of the namespace: one sequential range scan is ~2x
                # cheaper per row than looking each key up.
                rows = self._conn.execute(select, (space, dim, _DTYPE)).fetchall()
            else:
                rows = []
                for start in range(0, n, _CHUNK):
                    chunk = keys[start : start + _CHUNK]
                    query = select + " AND key IN (" + ",".join("?" * len(chunk)) + ")"
                    rows += self._conn.execute(
                        query, (space, dim, _DTYPE, *chunk)
                    ).fetchall()
        except sqlite3.Error as exc:
            raise CacheUnavailableError(
                f"cannot read the embedding cache {self.path}: {exc}"
            ) from exc
        if not rows:
            return found, 0
        # Column-wise from here: C-level maps and numpy, no Python code per row.
        got_keys, checksums, blobs = zip(*rows, strict=True)
        position = dict(zip(keys, range(n), strict=True))
        index = np.fromiter(
            map(position.get, got_keys, repeat(-1)), dtype=np.intp, count=len(rows)
        )
        # A key of another type or length matches no requested key (index -1).
        ok = index >= 0
        n_invalid = 0
        if set(map(type, blobs)) != {bytes} or set(map(type, checksums)) != {int}:
            # Some column's type was changed (e.g. to TEXT): rare, check per row.
            typed = np.fromiter(
                (
                    type(b) is bytes and type(c) is int
                    for b, c in zip(blobs, checksums, strict=True)
                ),
                dtype=bool,
                count=len(rows),
            )
            n_invalid += int(np.count_nonzero(ok & ~typed))
            ok &= typed
        sized = np.fromiter(map(len, blobs), np.intp, len(rows)) == dim * 4
        n_invalid += int(np.count_nonzero(ok & ~sized))
        ok &= sized
        if not ok.all():
            keep = np.flatnonzero(ok)
            if len(keep) == 0:
                return found, n_invalid
            got_keys = [got_keys[i] for i in keep]
            checksums = [checksums[i] for i in keep]
            blobs = [blobs[i] for i in keep]
            index = index[keep]
        vector_words = _words(blobs, dim)
        good = _checksums(space, _words(got_keys, _KEY_BYTES // 4), vector_words) == (
            np.array(checksums, dtype=np.int64)
        )
        # NaN or infinity (older versions cached whatever a member returned):
        # recomputed and overwritten, never served again.
        good &= np.isfinite(vector_words.view(np.float32)).all(axis=1)
        if not good.all():
            n_invalid += int(np.count_nonzero(~good))
            index, vector_words = index[good], vector_words[good]
        out[index] = vector_words.view(np.float32)
        found[index] = True
        return found, n_invalid

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

        Raises
        ------
        ValueError
            If a vector holds NaN or infinity (then nothing is written).
        """
        values = np.ascontiguousarray(values, dtype=_DTYPE)
        dim = values.shape[1]
        if len(keys) != len(values):
            raise ValueError(f"{len(keys)} keys for {len(values)} vectors")
        finite = np.isfinite(values).all(axis=1)
        if not finite.all():
            # A bad vector in the cache would be served for every later request.
            raise ValueError(
                f"refusing to cache non-finite vectors (row {np.argmin(finite)} of "
                f"{len(values)}); nothing was written."
            )
        checksums = _checksums(
            space, _words(keys, _KEY_BYTES // 4), values.view("<u4")
        ).tolist()

        def rows():
            for key, checksum, row in zip(keys, checksums, values, strict=True):
                yield space, key, dim, _DTYPE, checksum, row.tobytes()

        try:
            # BEGIN IMMEDIATE takes the write lock up front (waiting up to the busy
            # timeout) so the transaction cannot fail half-way on lock upgrade.
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "INSERT OR REPLACE INTO embedding VALUES (?, ?, ?, ?, ?, ?)", rows()
                )
                self._conn.execute("COMMIT")
            except BaseException:
                # After some errors (a full disk, I/O errors) SQLite has already rolled
                # the transaction back; a second ROLLBACK would replace the cause with
                # "no transaction is active".
                if self._conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            hint = ""
            if getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL":
                hint = " (free space on its disk or choose another cache_dir)"
            raise CacheUnavailableError(
                f"cannot write to the embedding cache {self.path}: {exc}{hint}"
            ) from exc
