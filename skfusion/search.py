"""Exact top-k search over float embeddings, packed bits and codes.

:func:`search` returns the ``k`` best database rows for every query, best first, ties
broken by the lower database index on every path, in memory bounded by ``batch_size``
whatever the database size. It handles float rows (cosine or inner product), packed sign
bits (Hamming, e.g. from :class:`~skfusion.lsh.RandomProjectionLSH`) and the codes of a
fitted code transformer (:class:`~skfusion.codes.BaseCodeTransformer`: the quantizers
and the LSH), symmetric (codes against codes) or asymmetric (float queries against
codes); the estimator says which metrics its codes support and what each code stands
for. faiss, when installed, computes the candidate lists where it is faster; every
result is then re-scored exactly, so both paths return identical scores and indices.

The metric resolution (:func:`_resolve_metric`: which metric a pair of inputs and an
estimator imply) and the exact Hamming top-k (:func:`_hamming_search`) live here; the
float and code metrics run on the scoring engine shared with
:class:`~skfusion.index.CodeIndex` (``skfusion._engine``: a vector space, float32
candidate lists, exact float64 re-scoring).
"""

from numbers import Integral, Real

import numpy as np
from scipy import sparse
from sklearn.utils.validation import check_is_fitted

from . import _engine
from ._compat import Interval, StrOptions, validate_params
from .codes import BaseCodeTransformer, BaseQuantizer

__all__ = ["search", "spread_weights"]

_METRICS = ("auto", "cosine", "ip", "hamming", "codes", "asymmetric", "reconstruct")


def _check_rows(name, X):
    """A dense 2-D array with at least one row (a memmap stays a memmap)."""
    if sparse.issparse(X):
        raise TypeError(
            f"{name} must be a dense array, got a sparse {type(X).__name__}: search "
            "compares dense rows. Pass X.toarray() or a dense embedding (e.g. reduce "
            "TF-IDF with TruncatedSVD first)."
        )
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {X.shape}.")
    if X.shape[0] == 0:
        raise ValueError(f"{name} has no rows.")
    if not (_is_float(X) or np.issubdtype(X.dtype, np.integer) or X.dtype == np.bool_):
        raise TypeError(
            f"{name} must hold float rows, uint8 codes or bool bits, got dtype {X.dtype}."
        )
    return X


def _is_float(X):
    return np.issubdtype(X.dtype, np.floating)


def _resolve_metric(metric, queries, database, quantizer):
    """The metric to use for these inputs; the estimator says what its codes support.

    ``quantizer`` is a fitted :class:`~skfusion.codes.BaseCodeTransformer` or None.
    """
    qf, df = _is_float(queries), _is_float(database)
    qb = queries.dtype in (np.uint8, np.bool_)
    db = database.dtype in (np.uint8, np.bool_)
    if metric == "auto":
        if qf and df:
            return "cosine"
        if qb and db:
            return "hamming" if quantizer is None else quantizer.symmetric_metric
        if qf and db and quantizer is not None and "asymmetric" in quantizer.code_metrics:
            return "asymmetric"
        raise TypeError(
            f"metric='auto' cannot pair queries of dtype {queries.dtype} with a "
            f"database of dtype {database.dtype}"
            + (
                "; float queries against uint8 codes need the fitted quantizer "
                "(quantizer=...)."
                if qf and db
                else "; pass float rows for both, or uint8 codes / packed bits for both."
            )
        )
    if quantizer is not None and metric not in ("cosine", "ip"):
        if metric not in quantizer.code_metrics:
            raise ValueError(
                f"metric={metric!r} does not apply to the codes of "
                f"{type(quantizer).__name__}, which support {quantizer.code_metrics}."
            )
    if metric in ("cosine", "ip") and not (qf and df):
        raise TypeError(
            f"metric={metric!r} needs float queries and database, got "
            f"{queries.dtype} and {database.dtype}."
        )
    if metric == "hamming" and not (qb and db):
        raise TypeError(
            f"metric='hamming' needs packed uint8 (or bool) bits for queries and "
            f"database, got {queries.dtype} and {database.dtype}."
        )
    if metric in _engine.CODE_METRICS:
        if quantizer is None:
            raise ValueError(
                f"metric={metric!r} needs the fitted quantizer that made the "
                "codes: pass quantizer=..."
            )
        if not db:
            raise TypeError(
                f"metric={metric!r} needs a uint8 code database, got {database.dtype}."
            )
        if metric == "codes" and not qb:
            raise TypeError(
                f"metric='codes' compares codes with codes: queries must be uint8 "
                f"codes, got {queries.dtype}; use metric='asymmetric' for float queries."
            )
        if metric != "codes" and not qf:
            raise TypeError(f"metric={metric!r} needs float queries, got {queries.dtype}.")
    return metric


def _as_words(bits):
    """Packed bits as uint64 words (zero-padded to whole words, distance-neutral)."""
    n, w = bits.shape
    pad = -w % 8
    if pad:
        bits = np.concatenate([bits, np.zeros((n, pad), dtype=np.uint8)], axis=1)
    return np.ascontiguousarray(bits).view(np.uint64)


def _hamming_block(Qw, Dw):
    """(m, n) Hamming distances between uint64-word rows, int32."""
    acc = np.zeros((Qw.shape[0], Dw.shape[0]), dtype=np.int32)
    DwT = np.ascontiguousarray(Dw.T)
    for w in range(Qw.shape[1]):
        acc += np.bitwise_count(np.bitwise_xor(Qw[:, w, None], DwT[w][None, :]))
    return acc


def _hamming_numpy(Q, database, k, batch_size):
    """Exact Hamming top-k: (distance, index) packed in one int64 key per pair."""
    n_db = database.shape[0]
    Qw = _as_words(Q)
    q_step = max(1, min(Q.shape[0], _engine.BLOCK_SCORES // batch_size))
    out_d = np.empty((Q.shape[0], k), dtype=np.int64)
    out_i = np.empty((Q.shape[0], k), dtype=np.int64)
    for qs in range(0, Q.shape[0], q_step):
        Qb = Qw[qs : qs + q_step]
        best = np.full((Qb.shape[0], 0), 0, dtype=np.int64)
        for ds in range(0, n_db, batch_size):
            Dw = _as_words(database[ds : ds + batch_size])
            key = _hamming_block(Qb, Dw).astype(np.int64) * n_db
            key += np.arange(ds, ds + Dw.shape[0])
            kk = min(k, key.shape[1])
            if kk < key.shape[1]:
                key = np.partition(key, kk - 1, axis=1)[:, :kk]
            best = np.sort(np.concatenate([best, key], 1), axis=1)[:, :k]
        out_d[qs : qs + Qb.shape[0]] = best // n_db
        out_i[qs : qs + Qb.shape[0]] = best % n_db
    return out_d, out_i


def _hamming_faiss(Q, database, k, batch_size, faiss):
    """faiss candidates, exact (distance, index) order, exact fallback on deep ties."""
    n_db = database.shape[0]
    k2 = min(n_db, k + max(k, 32))
    Qc = np.ascontiguousarray(Q)
    cand_d = np.zeros((Q.shape[0], 0), dtype=np.int64)
    cand_i = np.zeros((Q.shape[0], 0), dtype=np.int64)
    step = max(batch_size, 1 << 16)  # faiss keeps only (m, k2) per call
    for ds in range(0, n_db, step):
        block = np.ascontiguousarray(database[ds : ds + step])
        d, i = faiss.knn_hamming(Qc, block, min(k2, block.shape[0]))
        cand_d, cand_i = _engine.merge(
            -cand_d, cand_i, -d.astype(np.int64), i.astype(np.int64) + ds, k2
        )
        cand_d = -cand_d
    best_d, best_i = cand_d[:, :k], cand_i[:, :k]
    if k2 < n_db:
        # Rows whose k-th distance is shared down to the k2-th candidate may have
        # lower-index ties that faiss dropped: redo those rows exactly.
        risky = np.flatnonzero(cand_d[:, -1] <= best_d[:, -1])
        if risky.size:
            d, i = _hamming_numpy(Q[risky], database, k, batch_size)
            best_d, best_i = best_d.copy(), best_i.copy()
            best_d[risky], best_i[risky] = d, i
    return best_d, best_i


def _hamming_search(queries, database, k, *, quantizer, batch_size, faiss):
    """Exact Hamming top-k: (agreeing bits, indices), ties to the lower index.

    bool rows are packed first; with a code transformer, rows must have its packed
    width and the score counts its ``n_bits_`` (not the zero padding).
    """
    n_bits = queries.shape[1]
    if queries.dtype == np.bool_ or database.dtype == np.bool_:
        if queries.dtype != database.dtype:
            raise TypeError(
                "queries and database must both be packed uint8 or both bool bits."
            )
        queries, database = np.packbits(queries, axis=1), np.packbits(database, axis=1)
    else:
        n_bits = 8 * queries.shape[1]
    if queries.shape[1] != database.shape[1]:
        raise ValueError(
            f"queries have {queries.shape[1]} bytes per row but the database has "
            f"{database.shape[1]}; both must come from the same hasher."
        )
    if quantizer is not None:
        if queries.shape[1] != quantizer.bytes_per_vector_:
            raise ValueError(
                f"rows have {queries.shape[1]} bytes but {type(quantizer).__name__} "
                f"packs {quantizer.n_bits_} bits into {quantizer.bytes_per_vector_}."
            )
        n_bits = quantizer.n_bits_
    if faiss is not None:
        dist, idx = _hamming_faiss(queries, database, k, batch_size, faiss)
    else:
        dist, idx = _hamming_numpy(queries, database, k, batch_size)
    return n_bits - dist, idx


def _check_weights(weights, width):
    if weights is None:
        return None
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (width,):
        raise ValueError(f"weights must have shape ({width},), got {weights.shape}.")
    if not np.isfinite(weights).all() or (weights < 0).any():
        raise ValueError("weights must be finite and non-negative.")
    return weights.astype(np.float32)


def _check_widths(metric, queries, database, quantizer):
    """Width of the compared vectors; codes are validated by their estimator."""
    if metric in ("cosine", "ip"):
        width = database.shape[1]
        if queries.shape[1] != width:
            raise ValueError(
                f"queries have {queries.shape[1]} columns but the database has {width}."
            )
        return width
    quantizer.to_codes(database[:1])  # width / dtype check with a clear message
    width = quantizer.bits_.size
    if metric == "codes":
        quantizer.to_codes(queries[:1])
    elif queries.shape[1] != width:
        raise ValueError(
            f"float queries have {queries.shape[1]} columns but the quantizer was "
            f"fitted on {width}."
        )
    return width


@validate_params(
    {
        "quantizer": [BaseQuantizer],
        "beta": [Interval(Real, None, None, closed="neither")],
    },
    prefer_skip_nested_validation=True,
)
def spread_weights(quantizer, beta=0.5):
    """Per-dimension weights ``std_j ** beta`` (mean 1) for searching percentile codes.

    Percentile codes give every dimension the same spread, which acts like whitening
    the embedding; weighting dimension ``j`` by its calibration standard deviation to
    the power ``beta`` restores part of the original geometry (``beta=0``: plain codes,
    ``beta=1``: the original spread). Pass the result as ``search(..., weights=...)``;
    ``beta`` is a hyper-parameter to grid-search.

    Parameters
    ----------
    quantizer : PercentileQuantizer or AllocatedQuantizer
        A fitted quantizer (its ``std_``).
    beta : float, default=0.5
        Exponent; finite.

    Returns
    -------
    weights : ndarray of shape (n_features_in_,), dtype float32
        Normalised to mean 1; dimensions with zero spread get weight 0.

    Examples
    --------
    >>> import numpy as np
    >>> from skfusion.quantize import PercentileQuantizer
    >>> from skfusion.search import spread_weights
    >>> X = np.random.default_rng(0).standard_normal((500, 3)) * [1.0, 4.0, 0.0]
    >>> spread_weights(PercentileQuantizer().fit(X), beta=1.0).round(2)
    array([0.6, 2.4, 0. ], dtype=float32)
    """
    check_is_fitted(quantizer)
    if not np.isfinite(beta):
        raise ValueError(f"beta must be finite, got {beta!r}.")
    std = np.asarray(quantizer.std_, dtype=np.float64)
    w = np.where(std > 0, np.power(np.maximum(std, 1e-300), beta), 0.0)
    mean = w.mean()
    return (w / mean if mean > 0 else w).astype(np.float32)


@validate_params(
    {
        "queries": ["array-like", "sparse matrix"],
        "database": ["array-like", "sparse matrix"],
        "k": [Interval(Integral, 1, None, closed="left")],
        "metric": [StrOptions(set(_METRICS))],
        "quantizer": [BaseCodeTransformer, None],
        "weights": ["array-like", None],
        "normalize": ["boolean"],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "use_faiss": [StrOptions({"auto"}), "boolean"],
    },
    prefer_skip_nested_validation=True,
)
def search(
    queries,
    database,
    k=10,
    *,
    metric="auto",
    quantizer=None,
    weights=None,
    normalize=False,
    batch_size=16384,
    use_faiss="auto",
):
    """Exact top-``k`` database rows for every query, best first.

    Parameters
    ----------
    queries : ndarray of shape (n_queries, width)
        Float rows, packed uint8 bits (or bool bits), or uint8 percentile codes,
        matching ``metric``.
    database : ndarray of shape (n_database, width)
        Rows to search; may be a numpy memmap (read block by block).
    k : int, default=10
        Results per query. Clamped to ``n_database`` when larger (the outputs then
        have ``n_database`` columns).
    metric : {"auto", "cosine", "ip", "hamming", "codes", "asymmetric", \
"reconstruct"}, default="auto"
        - "cosine": cosine similarity of float rows (each row L2-normalised).
        - "ip": inner product of float rows.
        - "hamming": packed bits; the score is the number of agreeing bits
          (``n_bits - Hamming distance``), so fewest differing bits ranks first.
          bool rows are packed first.
        - "codes": symmetric search of codes against codes (packed or not, as made by
          ``quantizer``): inner product of their code values
          (``quantizer.code_vectors``; for percentile codes the centred code
          ``code - (2**bits - 1) / 2``).
        - "asymmetric": float queries against the database's code values (inner
          product); the queries are not quantized.
        - "reconstruct": float queries against the codes' ``inverse_transform``
          (bucket means), inner product.
        - "auto": "cosine" for float/float, "hamming" for uint8/uint8 without a
          quantizer, the quantizer's ``symmetric_metric`` with one, "asymmetric" for
          float queries against codes of a quantizer that supports it.
    quantizer : BaseCodeTransformer, default=None
        The fitted estimator that made the codes (``PercentileQuantizer``,
        ``AllocatedQuantizer`` or ``RandomProjectionLSH``); needed by the code metrics.
        It decides what its codes support (``code_metrics``), the metric "auto" picks
        (``symmetric_metric``) and what a code stands for (``code_values_``).
    weights : array-like of shape (width,), default=None
        Non-negative per-dimension weights ``w``: the score becomes
        ``sum_j w_j q_j d_j`` (for cosine, of the normalised rows). See
        :func:`spread_weights`. Not supported with "hamming".
    normalize : bool, default=False
        Rank by cosine: L2-normalise the (weighted) query vectors and the database
        vectors the metric compares (centred codes, code values, bucket means or float
        rows for "ip") before the dot product. Codes of different rows have different
        norms, so this changes the ranking. Not supported with "hamming"; "cosine"
        always normalises.
    batch_size : int, default=16384
        Database rows per block; at most ``4M / batch_size`` queries are scored at a
        time, so the score matrix never exceeds about 16 MiB.
    use_faiss : {"auto", True, False}, default="auto"
        Use faiss to build candidate lists: "auto" uses ``faiss.knn_hamming`` for
        "hamming" when faiss is installed (faster than numpy, see
        ``benchmarks/results/search_speed.md``) and numpy for
        float scores (as fast as ``faiss.knn`` here); True uses faiss for every metric
        (error if missing); False never. Results are identical either way.

    Returns
    -------
    scores : ndarray of shape (n_queries, min(k, n_database))
        float64 similarities (exact float64 dot products of the float32 vectors
        described above), or int64 agreeing bits for "hamming"; higher is better.
    indices : ndarray of shape (n_queries, min(k, n_database)), dtype int64
        Database rows, best first; equal scores are ordered by lower index.

    See Also
    --------
    skfusion.quantize.PercentileQuantizer : Makes the codes.
    skfusion.lsh.RandomProjectionLSH : Makes the packed bits.
    skfusion.metrics.run_from_topk : Turns the result into a run for nDCG.

    Notes
    -----
    Candidates are found with float32 matrix products (numpy or faiss), keeping
    ``k + max(k, 16)`` per query; the candidates are re-scored in float64 and a query
    whose candidate list could have missed a row within float32 rounding error of the
    k-th score is re-scored exactly over the whole database. Hamming distances are
    integers and exact on both paths; faiss keeps ``k + max(k, 32)`` candidates and
    queries whose k-th distance is shared beyond them are redone by numpy.

    Which code metric wins on debian-packages, with and without
    :func:`spread_weights`, is measured in ``benchmarks/results/code_similarity.md``:
    "asymmetric" when queries are embedded at search time (the usual case), "codes"
    with ``beta`` about 1 when queries must be stored or sent quantized too.

    Examples
    --------
    >>> import numpy as np
    >>> from skfusion.search import search
    >>> db = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> scores, idx = search(np.array([[1.0, 0.2]]), db, k=2)
    >>> idx
    array([[0, 2]])
    >>> bits = np.array([[0b1111_0000], [0b1111_0001], [0b0000_1111]], dtype=np.uint8)
    >>> search(bits[:1], bits, k=3, metric="hamming")
    (array([[8, 7, 0]]), array([[0, 1, 2]]))
    """
    for name, value in (("k", k), ("batch_size", batch_size)):
        if isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if use_faiss is True:
        faiss = _engine.require_faiss("use_faiss=True")
    else:
        faiss = None if use_faiss is False else _engine.get_faiss()
    queries = _check_rows("queries", queries)
    database = _check_rows("database", database)
    if quantizer is not None:
        check_is_fitted(quantizer)
    metric = _resolve_metric(metric, queries, database, quantizer)
    k = min(int(k), database.shape[0])
    if _is_float(queries):
        _engine.check_finite("queries", queries)
    if metric == "hamming":
        if weights is not None:
            raise ValueError("weights are not supported with metric='hamming'.")
        if normalize:
            raise ValueError("normalize=True is not supported with metric='hamming'.")
        return _hamming_search(
            queries, database, k, quantizer=quantizer, batch_size=batch_size, faiss=faiss
        )
    weights = _check_weights(weights, _check_widths(metric, queries, database, quantizer))
    space = _engine.VectorSpace(metric, queries, database, quantizer, weights, normalize)
    # For float scores numpy's BLAS product is as fast as faiss.knn here (see
    # benchmarks/results/search_speed.md): faiss only when asked for explicitly.
    faiss = faiss if use_faiss is True else None
    return _engine.float_search(space, database.shape[0], k, batch_size, faiss)
