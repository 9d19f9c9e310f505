"""skfusion output in a vector database: LanceDB tables of packed bits or float vectors.

:func:`write_lancedb` stores rows with their ids in a LanceDB table (packed uint8 bits as
a ``fixed_size_list<uint8>`` column, searched by Hamming distance; float rows as
``fixed_size_list<float32>``, searched by cosine or dot product) and
:func:`search_lancedb` queries it, returning scores on the same scale as
:func:`skfusion.search.search` (agreeing bits for Hamming, similarities for cosine and
inner product) so the two can be compared row for row. Exact (flat) search is the
default; an ANN index built on the table with LanceDB's own ``create_index`` is used
with ``exact=False``.

LanceDB is an optional dependency: ``pip install lancedb``.
"""

import os
from numbers import Integral

import numpy as np

from ._compat import HasMethods, Interval, StrOptions, validate_params

__all__ = ["search_lancedb", "write_lancedb"]

_STORE_METRIC = {"hamming": "hamming", "cosine": "cosine", "ip": "dot"}


def _lancedb():
    try:
        import lancedb
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("LanceDB is not installed: pip install lancedb.") from exc
    return lancedb


def _rows(name, X):
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array, got shape {X.shape}.")
    if X.dtype == np.uint8:
        return X
    if np.issubdtype(X.dtype, np.floating):
        if not np.isfinite(X).all():
            raise ValueError(f"{name} contains NaN or infinity.")
        return X.astype(np.float32)
    raise TypeError(
        f"{name} must hold packed uint8 bits (e.g. RandomProjectionLSH output) or float "
        f"rows, got dtype {X.dtype}."
    )


@validate_params(
    {
        "db": [str, os.PathLike, HasMethods(["create_table"])],
        "name": [str],
        "vectors": ["array-like"],
        "ids": ["array-like", None],
        "mode": [StrOptions({"create", "overwrite", "append"})],
    },
    prefer_skip_nested_validation=True,
)
def write_lancedb(db, name, vectors, ids=None, *, mode="create"):
    """Write rows and their ids to a LanceDB table.

    Parameters
    ----------
    db : str, path-like or lancedb.DBConnection
        A LanceDB folder (created if missing) or an open connection.
    name : str
        Table name.
    vectors : array-like of shape (n_rows, width)
        Packed uint8 bits (Hamming) or float rows (stored as float32).
    ids : array-like of str of shape (n_rows,), default=None
        One id per row; None: ``"0"``, ``"1"``, ... (continuing after the existing
        rows with ``mode="append"``).
    mode : {"create", "overwrite", "append"}, default="create"
        "create" fails if the table exists.

    Returns
    -------
    table : lancedb.table.Table
        Columns ``id`` (string) and ``vector``.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from skfusion.vectorstore import search_lancedb, write_lancedb
    >>> bits = np.array([[0b1111_0000], [0b1111_0001], [0b0000_1111]], dtype=np.uint8)
    >>> table = write_lancedb(tempfile.mkdtemp(), "bits", bits, ["a", "b", "c"])
    >>> search_lancedb(table, bits[:1], k=2)
    (array([[8, 7]]), array([['a', 'b']], dtype=object))
    """
    import pyarrow as pa

    lancedb = _lancedb()
    vectors = _rows("vectors", vectors)
    if not hasattr(db, "create_table"):
        db = lancedb.connect(os.fspath(db))
    start = 0
    if mode == "append":
        table = db.open_table(name)
        start = table.count_rows()
    if ids is None:
        ids = [str(i) for i in range(start, start + vectors.shape[0])]
    ids = [str(i) for i in ids]
    if len(ids) != vectors.shape[0]:
        raise ValueError(
            f"ids must hold one id per row: {len(ids)} ids for {vectors.shape[0]} rows."
        )
    value_type = pa.uint8() if vectors.dtype == np.uint8 else pa.float32()
    column = pa.FixedSizeListArray.from_arrays(
        pa.array(vectors.ravel(), value_type), vectors.shape[1]
    )
    data = pa.table({"id": pa.array(ids, pa.string()), "vector": column})
    if mode == "append":
        table.add(data)
        return table
    return db.create_table(name, data, mode=mode)


@validate_params(
    {
        "table": [HasMethods(["search"])],
        "queries": ["array-like"],
        "k": [Interval(Integral, 1, None, closed="left")],
        "metric": [StrOptions({"auto", "hamming", "cosine", "ip"})],
        "n_bits": [Interval(Integral, 1, None, closed="left"), None],
        "exact": ["boolean"],
    },
    prefer_skip_nested_validation=True,
)
def search_lancedb(table, queries, k=10, *, metric="auto", n_bits=None, exact=True):
    """Top-``k`` rows of a LanceDB table for every query, best first.

    Parameters
    ----------
    table : lancedb.table.Table
        Written by :func:`write_lancedb`.
    queries : array-like of shape (n_queries, width)
        Packed uint8 bits or float rows, as the table's vectors.
    k : int, default=10
        Results per query.
    metric : {"auto", "hamming", "cosine", "ip"}, default="auto"
        "auto": "hamming" for uint8 queries, "cosine" for float queries.
    n_bits : int, default=None
        Bits per row for Hamming scores (the estimator's ``n_bits_``); None:
        ``8 * width``.
    exact : bool, default=True
        Flat (brute-force) search, bypassing any vector index on the table.

    Returns
    -------
    scores : ndarray of shape (n_queries, k)
        As :func:`skfusion.search.search`: int64 agreeing bits (``n_bits`` - Hamming
        distance), or float64 cosine / inner product (LanceDB computes them in
        float32).
    ids : ndarray of shape (n_queries, k), dtype object
        Row ids, best first.
    """
    queries = _rows("queries", queries)
    if metric == "auto":
        metric = "hamming" if queries.dtype == np.uint8 else "cosine"
    if (metric == "hamming") != (queries.dtype == np.uint8):
        raise TypeError(
            f"metric={metric!r} does not apply to queries of dtype {queries.dtype}: "
            "Hamming compares packed uint8 bits, cosine / ip float rows."
        )
    n_bits = 8 * queries.shape[1] if n_bits is None else int(n_bits)
    scores, ids = [], []
    for q in queries:
        query = table.search(q).distance_type(_STORE_METRIC[metric]).limit(k)
        if exact:
            query = query.bypass_vector_index()
        result = query.select(["id"]).to_arrow()
        dist = result["_distance"].to_numpy().astype(np.float64)
        # LanceDB returns distances: Hamming, 1 - cosine, 1 - dot.
        scores.append(n_bits - dist.astype(np.int64) if metric == "hamming" else 1.0 - dist)
        ids.append(np.asarray(result["id"].to_pylist(), dtype=object))
    return np.stack(scores), np.stack(ids)
