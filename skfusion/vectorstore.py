"""skfusion output in a vector database: LanceDB tables of packed bits or float vectors.

:func:`write_lancedb` stores rows with their ids in a LanceDB table (packed uint8 bits as
a ``fixed_size_list<uint8>`` column, searched by Hamming distance; float rows as
``fixed_size_list<float32>``, searched by cosine or dot product) and
:func:`search_lancedb` queries it, returning scores on the same scale as
:func:`skfusion.search.search` (agreeing bits for Hamming, similarities for cosine and
inner product) so the two can be compared row for row. Exact (flat) search is the
default; an ANN index built on the table with LanceDB's own ``create_index`` is used
with ``exact=False``.

Codes of a fitted code transformer are written with ``quantizer=``: bits (LSH, 1-bit
codes) are packed and searched by Hamming distance; multi-bit codes are stored as their
``code_vectors`` (float32), whose inner product is the codes' own similarity, since the
Hamming distance of their bits is not.

LanceDB is an optional dependency: ``pip install lancedb``.
"""

import os
from numbers import Integral

import numpy as np
from sklearn.utils.validation import check_is_fitted

from ._compat import HasMethods, Interval, StrOptions, validate_params
from .codes import BaseCodeTransformer

__all__ = ["search_lancedb", "write_lancedb"]

_STORE_METRIC = {"hamming": "hamming", "cosine": "cosine", "ip": "dot"}
# uint8 rows whose every value is at most this, with at least _CODES_MIN_VALUES values,
# are unpacked codes (of at most 4 bits), not packed bits: 64 packed bytes with all
# their leading 4 bits zero do not come out of LSH or 1-bit codes.
_CODES_MAX_VALUE = 15
_CODES_MIN_VALUES = 64
_CODES_FIX = (
    "pass quantizer=<the fitted estimator that made them>: bits (RandomProjectionLSH, "
    "1-bit codes) are then packed and searched by Hamming distance, multi-bit codes "
    "stored as quantizer.code_vectors(codes) and searched by their own similarity"
)


def _lancedb():
    try:
        import lancedb
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("LanceDB is not installed: pip install lancedb.") from exc
    return lancedb


def _is_codes(X, quantizer):
    return quantizer is not None and (np.issubdtype(X.dtype, np.integer) or X.dtype == bool)


def _from_codes(X, quantizer):
    """(what the table stores, its metric) for codes of ``quantizer`` (packed or not):
    packed bits when the code transformer says Hamming is their similarity, else float32
    code vectors (inner product); (``X``, None) for anything else."""
    X = np.asarray(X)
    if not _is_codes(X, quantizer):
        return X, None
    check_is_fitted(quantizer)
    if "hamming" in quantizer.code_metrics:
        return quantizer.to_packed(X), "hamming"
    return quantizer.code_vectors(X), "ip"


def _rows(name, X):
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array, got shape {X.shape}.")
    if X.dtype == np.uint8:
        if X.size >= _CODES_MIN_VALUES and X.max() <= _CODES_MAX_VALUE:
            raise ValueError(
                f"{name} look like unpacked codes, not packed bits: every value is in "
                f"0..{X.max()}, and Hamming search would compare the bits of the code "
                f"numbers, which is not the codes' similarity; {_CODES_FIX}."
            )
        return X
    if np.issubdtype(X.dtype, np.floating):
        if not np.isfinite(X).all():
            raise ValueError(f"{name} contains NaN or infinity.")
        return X.astype(np.float32)
    hint = (
        f"; {_CODES_FIX}" if np.issubdtype(X.dtype, np.integer) or X.dtype == bool else ""
    )
    raise TypeError(
        f"{name} must hold packed uint8 bits (e.g. RandomProjectionLSH output) or float "
        f"rows, got dtype {X.dtype}{hint}."
    )


def _describe(dtype, width):
    kind = "packed uint8 bits" if dtype == np.uint8 else "float32 rows"
    return f"{kind} of width {width}"


def _check_table(table, name, rows):
    """Refuse rows whose kind (bits / floats) or width differ from the table's."""
    import pyarrow as pa

    field = table.schema.field("vector")
    kind = field.type
    if not pa.types.is_fixed_size_list(kind):  # pragma: no cover - not our table
        raise ValueError(
            f"the table's vector column is {kind}, not a fixed-size list written by "
            "write_lancedb."
        )
    want = np.uint8 if pa.types.is_uint8(kind.value_type) else np.float32
    if rows.dtype != want or rows.shape[1] != kind.list_size:
        raise ValueError(
            f"{name} are {_describe(rows.dtype, rows.shape[1])} but the table holds "
            f"{_describe(want, kind.list_size)}: use the same model and quantizer "
            "(packed or not) as for the table's rows, or write a new table."
        )


@validate_params(
    {
        "db": [str, os.PathLike, HasMethods(["create_table"])],
        "name": [str],
        "vectors": ["array-like"],
        "ids": ["array-like", None],
        "mode": [StrOptions({"create", "overwrite", "append"})],
        "quantizer": [BaseCodeTransformer, None],
    },
    prefer_skip_nested_validation=True,
)
def write_lancedb(db, name, vectors, ids=None, *, mode="create", quantizer=None):
    """Write rows and their ids to a LanceDB table.

    Parameters
    ----------
    db : str, path-like or lancedb.DBConnection
        A LanceDB folder (created if missing) or an open connection.
    name : str
        Table name.
    vectors : array-like of shape (n_rows, width)
        Packed uint8 bits (Hamming) or float rows (stored as float32); with
        ``quantizer``, its codes, packed or not. uint8 rows that are plainly unpacked
        codes (64 values or more, all at most 15) are refused without ``quantizer``.
    ids : array-like of str of shape (n_rows,), default=None
        One id per row; None: ``"0"``, ``"1"``, ... (continuing after the existing
        rows with ``mode="append"``).
    mode : {"create", "overwrite", "append"}, default="create"
        "create" fails if the table exists; "append" needs rows of the table's kind
        and width.
    quantizer : BaseCodeTransformer, default=None
        The fitted estimator whose codes ``vectors`` are. Bits (``"hamming"`` in
        its ``code_metrics``: RandomProjectionLSH, 1-bit codes) are stored packed;
        multi-bit codes as ``quantizer.code_vectors(vectors)`` (float32), whose inner
        product is their symmetric code similarity (search them with the same
        ``quantizer``).

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
    vectors = _rows("vectors", _from_codes(vectors, quantizer)[0])
    if not hasattr(db, "create_table"):
        db = lancedb.connect(os.fspath(db))
    start = 0
    if mode == "append":
        table = db.open_table(name)
        _check_table(table, "vectors", vectors)
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
        "quantizer": [BaseCodeTransformer, None],
    },
    prefer_skip_nested_validation=True,
)
def search_lancedb(
    table, queries, k=10, *, metric="auto", n_bits=None, exact=True, quantizer=None
):
    """Top-``k`` rows of a LanceDB table for every query, best first.

    Parameters
    ----------
    table : lancedb.table.Table
        Written by :func:`write_lancedb`.
    queries : array-like of shape (n_queries, width)
        Packed uint8 bits or float rows, of the table's kind and width; with
        ``quantizer``, its codes (packed or not). Cosine needs non-zero rows.
    k : int, default=10
        Results per query.
    metric : {"auto", "hamming", "cosine", "ip"}, default="auto"
        "auto": "hamming" for uint8 queries, "cosine" for float queries, "ip" for
        multi-bit codes of ``quantizer``.
    n_bits : int, default=None
        Bits per row for Hamming scores (the estimator's ``n_bits_``); None:
        ``quantizer.n_bits_``, else ``8 * width``.
    exact : bool, default=True
        Flat (brute-force) search, bypassing any vector index on the table.
    quantizer : BaseCodeTransformer, default=None
        The fitted estimator whose codes the queries (and the table, see
        :func:`write_lancedb`) are; scores are then those of
        :func:`skfusion.search.search` with ``metric=quantizer.symmetric_metric``.

    Returns
    -------
    scores : ndarray of shape (n_queries, k)
        As :func:`skfusion.search.search`: int64 agreeing bits (``n_bits`` - Hamming
        distance), or float64 cosine / inner product (LanceDB computes them in
        float32).
    ids : ndarray of shape (n_queries, k), dtype object
        Row ids, best first.

    Examples
    --------
    Float rows are searched by cosine, on :func:`skfusion.search.search`'s scale:

    >>> import tempfile
    >>> import numpy as np
    >>> from skfusion.vectorstore import search_lancedb, write_lancedb
    >>> rows = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=np.float32)
    >>> table = write_lancedb(tempfile.mkdtemp(), "docs", rows, ["x", "xy", "y"])
    >>> scores, ids = search_lancedb(table, rows[1:2], k=2)
    >>> ids.tolist(), np.round(scores, 2).tolist()
    ([['xy', 'y']], [[1.0, 0.8]])
    """
    queries, code_metric = _from_codes(queries, quantizer)
    queries = _rows("queries", queries)
    if metric == "auto":
        # Codes: what their transformer says; otherwise packed uint8 bits (faiss's
        # convention) or float rows.
        metric = code_metric or ("hamming" if queries.dtype == np.uint8 else "cosine")
    if (metric == "hamming") != (queries.dtype == np.uint8):
        raise TypeError(
            f"metric={metric!r} does not apply to queries of dtype {queries.dtype}: "
            "Hamming compares packed uint8 bits, cosine / ip float rows."
        )
    _check_table(table, "queries", queries)
    if metric == "cosine":
        zero = np.flatnonzero(~np.any(queries, axis=1))
        if zero.size:
            raise ValueError(
                f"queries row {zero[0]} is all zeros: its cosine similarity is "
                "undefined and LanceDB returns no rows for it. Drop such rows or use "
                "metric='ip'."
            )
    if n_bits is None:
        n_bits = quantizer.n_bits_ if quantizer is not None else 8 * queries.shape[1]
    n_bits = int(n_bits)
    scores, ids = [], []
    for q in queries:
        query = table.search(q).distance_type(_STORE_METRIC[metric]).limit(k)
        if exact:
            query = query.bypass_vector_index()
        # Naming _distance keeps LanceDB's one-line-per-query deprecation warning about
        # implicitly added distances off the user's stderr.
        result = query.select(["id", "_distance"]).to_arrow()
        dist = result["_distance"].to_numpy().astype(np.float64)
        # LanceDB returns distances: Hamming, 1 - cosine, 1 - dot.
        scores.append(n_bits - dist.astype(np.int64) if metric == "hamming" else 1.0 - dist)
        ids.append(np.asarray(result["id"].to_pylist(), dtype=object))
    return np.stack(scores), np.stack(ids)
