"""Exact top-k search over float embeddings, packed bits and percentile codes.

:func:`search` returns the ``k`` best database rows for every query, best first, ties
broken by the lower database index, in memory bounded by ``batch_size`` whatever the
database size. It handles float rows (cosine or inner product), packed sign bits
(Hamming, e.g. from :class:`~skfusion.lsh.RandomProjectionLSH`) and uint8 codes from a
fitted :class:`~skfusion.quantize.PercentileQuantizer`, symmetric (codes against codes)
or asymmetric (float queries against codes). faiss, when installed, computes the
candidate lists where it is faster; every result is then re-scored exactly, so both
paths return identical scores and indices.
"""

from numbers import Integral

import numpy as np

__all__ = ["search", "spread_weights"]

_METRICS = ("auto", "cosine", "ip", "hamming", "codes", "asymmetric", "reconstruct")
# Score-matrix entries per block (16 MiB of float32 scores).
_BLOCK_SCORES = 1 << 22


def _faiss():
    try:
        import faiss
    except ImportError:  # pragma: no cover - depends on the environment
        return None
    return faiss


def _check_2d(name, X):
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {X.shape}.")
    if X.shape[0] == 0:
        raise ValueError(f"{name} has no rows.")
    return X


def _is_float(X):
    return np.issubdtype(X.dtype, np.floating)


def _check_finite(name, X):
    if not np.isfinite(X).all():
        raise ValueError(f"{name} contains NaN or infinity; search needs finite rows.")


def _resolve_metric(metric, queries, database, quantizer):
    qf, df = _is_float(queries), _is_float(database)
    qb = queries.dtype in (np.uint8, np.bool_)
    db = database.dtype in (np.uint8, np.bool_)
    if metric == "auto":
        if qf and df:
            return "cosine"
        if qb and db:
            return "codes" if quantizer is not None else "hamming"
        if qf and db and quantizer is not None:
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
    if metric in ("codes", "asymmetric", "reconstruct"):
        if quantizer is None:
            raise ValueError(
                f"metric={metric!r} needs the fitted quantizer that made the "
                "codes: pass quantizer=..."
            )
        if not db or database.dtype == np.bool_:
            raise TypeError(
                f"metric={metric!r} needs a uint8 code database, got {database.dtype}."
            )
        if metric == "codes" and queries.dtype != np.uint8:
            raise TypeError(
                f"metric='codes' compares codes with codes: queries must be uint8 "
                f"codes, got {queries.dtype}; use metric='asymmetric' for float queries."
            )
        if metric != "codes" and not qf:
            raise TypeError(f"metric={metric!r} needs float queries, got {queries.dtype}.")
    return metric


def _exact_dot(Q, D):
    """Float64 scores of row pairs: elementwise products summed along the last axis.

    Products of float32 values are exact in float64 and numpy sums each contiguous
    last-axis row the same way whatever the number of rows, so a pair's score does not
    depend on batching or on which path found it.
    """
    return (Q * D).sum(axis=-1)


def _select(scores, idx, k):
    """Best ``k`` of each row by (score descending, index ascending)."""
    order = np.lexsort((idx, -scores), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(idx, order, 1)


def _merge(best_s, best_i, s, i, k):
    return _select(np.concatenate([best_s, s], 1), np.concatenate([best_i, i], 1), k)


def _top_block(S, k):
    """Up to ``k`` highest entries per row of ``S`` (any order, ties arbitrary)."""
    n = S.shape[1]
    if n <= k:
        return S, np.broadcast_to(np.arange(n), S.shape)
    part = np.argpartition(S, n - k, axis=1)[:, n - k :]
    return np.take_along_axis(S, part, 1), part


class _FloatSpace:
    """Turns queries and database rows into float32 vectors whose dot is the score."""

    def __init__(self, metric, queries, database, quantizer, weights, normalize=False):
        self.metric = metric
        self.database = database
        self.quantizer = quantizer
        self.normalize = normalize and metric not in ("cosine", "hamming")
        d = database.shape[1] if metric in ("cosine", "ip") else None
        # Per-dimension code values (AllocatedQuantizer) replace the centred codes.
        self.table = None
        self.centre = np.float32(0.0)
        if metric in ("codes", "asymmetric", "reconstruct"):
            d = quantizer.n_features_in_
            self.table = getattr(quantizer, "code_values_", None)
            if self.table is None:
                self.centre = np.float32(((1 << quantizer.bits) - 1) / 2)
        self.d = d
        self.weights = weights
        # Unweighted centred codes are multiples of 1/2 whose dot products stay below
        # 2**22: float32 products and sums are then exact, no rounding slack needed.
        self.exact32 = (
            metric == "codes"
            and weights is None
            and self.table is None
            and not self.normalize
            and d * float(self.centre) ** 2 * 4 < 2**22
        )
        self.Q = self._queries(queries)

    def _codes(self, rows):
        return self.quantizer._as_codes(rows)

    def _code_values(self, codes):
        if self.table is not None:
            return self.table[np.arange(self.d), codes]
        return codes.astype(np.float32) - self.centre

    def _queries(self, queries):
        if self.metric == "codes":
            Q = self._code_values(self._codes(queries))
        else:
            Q = np.array(queries, dtype=np.float32)
            if self.metric == "cosine":
                Q = _l2(Q)
        if self.weights is not None:
            Q *= self.weights
        if self.normalize:
            Q = _l2(Q)
        return np.ascontiguousarray(Q)

    def rows(self, index):
        """Transformed float32 database rows (a slice or an index array)."""
        rows = self.database[index]
        if self.metric in ("cosine", "ip"):
            D = np.asarray(rows, dtype=np.float32)
            # Checked block by block as read, so a memmap is never loaded whole.
            _check_finite("database", D)
            if self.metric == "cosine" or self.normalize:
                return _l2(D)
            return np.ascontiguousarray(D)
        codes = self._codes(rows)
        if self.metric == "reconstruct":
            D = self.quantizer.bucket_values_[np.arange(self.d), codes]
        else:
            D = self._code_values(codes)
        return _l2(D) if self.normalize else D


def _l2(X):
    norms = np.sqrt(np.einsum("ij,ij->i", X, X, dtype=np.float32))
    return np.ascontiguousarray(X / np.maximum(norms, np.float32(1e-30))[:, None])


def _float_search(space, n_db, k, batch_size, faiss):
    Q = space.Q
    m_all = Q.shape[0]
    k2 = min(n_db, k + max(k, 16))
    q_step = max(1, min(m_all, _BLOCK_SCORES // batch_size))
    db_step = batch_size
    if faiss is not None:
        # faiss returns only (m, k2) per call and tiles its own score matrix: give it
        # all queries and larger database blocks (at most ~64 MiB of float32 rows).
        q_step = m_all
        db_step = max(batch_size, (1 << 24) // max(Q.shape[1], 1))
    out_s = np.empty((m_all, k), dtype=np.float64)
    out_i = np.empty((m_all, k), dtype=np.int64)
    for qs in range(0, m_all, q_step):
        Qb = Q[qs : qs + q_step]
        m = Qb.shape[0]
        cand_s = np.full((m, 0), -np.inf, dtype=np.float32)
        cand_i = np.zeros((m, 0), dtype=np.int64)
        dmax = 0.0
        for ds in range(0, n_db, db_step):
            D = space.rows(slice(ds, ds + db_step))
            dmax = max(dmax, float(np.abs(D).max()))
            if faiss is not None:
                s, i = faiss.knn(Qb, D, min(k2, D.shape[0]), faiss.METRIC_INNER_PRODUCT)
                i = i.astype(np.int64)
            else:
                S = Qb @ D.T
                if cand_s.shape[1] == k2:
                    # Prune: only entries above the current k2-th best can enter.
                    keep = (S > cand_s[:, -1:]).any(axis=1)
                    if not keep.any():
                        continue
                s, i = _top_block(S, k2)
            cand_s, cand_i = _merge(cand_s, cand_i, s, i + ds, k2)
        # Exact float64 re-scoring of the candidates.
        Q64 = Qb.astype(np.float64)
        D64 = space.rows(cand_i.ravel()).astype(np.float64).reshape(m, k2, -1)
        exact = _exact_dot(Q64[:, None, :], D64)
        best_s, best_i = _select(exact, cand_i, k)
        if k2 < n_db:
            # A row outside the candidates has float32 score <= the k2-th candidate's,
            # so its exact score is at most that plus the float32 error bound.
            d = Q.shape[1]
            tol = 4.0 * d * 2.0**-24 * np.abs(Qb).sum(axis=1) * dmax
            if space.exact32:
                tol = 0.0
            risky = np.flatnonzero(cand_s[:, -1] + tol >= best_s[:, -1] - tol)
            for r in risky:
                best_s[r], best_i[r] = _exact_row(space, Q64[r], n_db, k, batch_size)
        out_s[qs : qs + m], out_i[qs : qs + m] = best_s, best_i
    return out_s, out_i


def _exact_row(space, q64, n_db, k, batch_size):
    """Exact top-k of one query by float64 scoring of every database row."""
    best_s = np.zeros((1, 0))
    best_i = np.zeros((1, 0), dtype=np.int64)
    for ds in range(0, n_db, batch_size):
        D64 = space.rows(slice(ds, ds + batch_size)).astype(np.float64)
        s = _exact_dot(q64[None, :], D64)[None, :]
        top_s, top_i = _top_block(s, k)
        best_s, best_i = _merge(best_s, best_i, top_s, top_i + ds, k)
    return best_s[0], best_i[0]


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
    q_step = max(1, min(Q.shape[0], _BLOCK_SCORES // batch_size))
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
        cand_d, cand_i = _merge(
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


def spread_weights(quantizer, beta=0.5):
    """Per-dimension weights ``std_j ** beta`` (mean 1) for searching percentile codes.

    Percentile codes give every dimension the same spread, which acts like whitening
    the embedding; weighting dimension ``j`` by its calibration standard deviation to
    the power ``beta`` restores part of the original geometry (``beta=0``: plain codes,
    ``beta=1``: the original spread). Pass the result as ``search(..., weights=...)``;
    ``beta`` is a hyper-parameter to grid-search.

    Parameters
    ----------
    quantizer : PercentileQuantizer
        A fitted quantizer (its ``std_``).
    beta : float, default=0.5
        Exponent; finite.

    Returns
    -------
    weights : ndarray of shape (n_features_in_,), dtype float32
        Normalised to mean 1; dimensions with zero spread get weight 0.
    """
    std = getattr(quantizer, "std_", None)
    if std is None:
        raise ValueError("quantizer must be a fitted PercentileQuantizer (no std_).")
    if not np.isfinite(beta):
        raise ValueError(f"beta must be finite, got {beta!r}.")
    std = np.asarray(std, dtype=np.float64)
    w = np.where(std > 0, np.power(np.maximum(std, 1e-300), beta), 0.0)
    mean = w.mean()
    return (w / mean if mean > 0 else w).astype(np.float32)


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
        - "codes": symmetric search of uint8 codes against uint8 codes (packed or not,
          as made by ``quantizer``): inner product of the centred codes
          ``code - (2**bits - 1) / 2``.
        - "asymmetric": float queries against the database's centred codes (inner
          product); the queries are not quantized.
        - "reconstruct": float queries against the codes' ``inverse_transform``
          (bucket means), inner product.
        - "auto": "cosine" for float/float, "hamming" for uint8/uint8 without a
          quantizer, "codes" with one, "asymmetric" for float queries against uint8
          codes with a quantizer.
    quantizer : PercentileQuantizer or AllocatedQuantizer, default=None
        The fitted quantizer that made the codes (needed by the code metrics). With an
        :class:`~skfusion.allocation.AllocatedQuantizer` a code stands for its
        ``code_values_`` entry instead of the centred code.
    weights : array-like of shape (width,), default=None
        Non-negative per-dimension weights ``w``: the score becomes
        ``sum_j w_j q_j d_j`` (for cosine, of the normalised rows). See
        :func:`spread_weights`. Not supported with "hamming".
    normalize : bool, default=False
        Rank by cosine: L2-normalise the (weighted) query vectors and the database
        vectors the metric compares (centred codes, code values, bucket means or float
        rows for "ip") before the dot product. Codes of different rows have different
        norms, so this changes the ranking (on debian-packages it is worth about one
        point of nDCG@10 for 1-3-bit codes). Not supported with "hamming"; "cosine"
        always normalises.
    batch_size : int, default=16384
        Database rows per block; at most ``4M / batch_size`` queries are scored at a
        time, so the score matrix never exceeds about 16 MiB.
    use_faiss : {"auto", True, False}, default="auto"
        Use faiss to build candidate lists: "auto" uses ``faiss.knn_hamming`` for
        "hamming" when faiss is installed (about 2.5x faster than numpy) and numpy for
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

    Which code metric wins, measured on debian-packages (PCA-341 of the 1,024-d
    three-member concatenation, 2 bits, 48x smaller than float32; nDCG@10 on test as a
    fraction of float PCA-341 cosine; ``benchmarks/results/code_similarity.md``):
    "asymmetric" 100.2% unweighted (weights hurt: the float queries already carry each
    dimension's spread); "reconstruct" 95.3%; "codes" 96.5% unweighted, 98.1% with
    ``spread_weights(q, 0.5)`` and 98.6% with ``beta=1``. Use "asymmetric" when queries
    are embedded at search time (the usual case) and "codes" with ``beta`` about 1 when
    queries must be stored or sent quantized too.

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
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}.")
    if isinstance(k, bool) or not isinstance(k, Integral) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, Integral):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if normalize not in (True, False):
        raise ValueError(f"normalize must be True or False, got {normalize!r}.")
    if use_faiss not in ("auto", True, False):
        raise ValueError(f"use_faiss must be 'auto', True or False, got {use_faiss!r}.")
    faiss = None if use_faiss is False else _faiss()
    if use_faiss is True and faiss is None:
        raise ImportError("use_faiss=True but faiss is not installed (faiss-cpu).")
    queries = _check_2d("queries", queries)
    database = _check_2d("database", database)
    metric = _resolve_metric(metric, queries, database, quantizer)
    k = min(int(k), database.shape[0])
    if _is_float(queries):
        _check_finite("queries", queries)

    if metric == "hamming":
        if weights is not None:
            raise ValueError("weights are not supported with metric='hamming'.")
        if normalize:
            raise ValueError("normalize=True is not supported with metric='hamming'.")
        n_bits = queries.shape[1]
        if queries.dtype == np.bool_ or database.dtype == np.bool_:
            if queries.dtype != database.dtype:
                raise TypeError(
                    "queries and database must both be packed uint8 or both bool bits."
                )
            queries, database = (
                np.packbits(queries, axis=1),
                np.packbits(database, axis=1),
            )
        else:
            n_bits = 8 * queries.shape[1]
        if queries.shape[1] != database.shape[1]:
            raise ValueError(
                f"queries have {queries.shape[1]} bytes per row but the database has "
                f"{database.shape[1]}; both must come from the same hasher."
            )
        if faiss is not None:
            dist, idx = _hamming_faiss(queries, database, k, batch_size, faiss)
        else:
            dist, idx = _hamming_numpy(queries, database, k, batch_size)
        return n_bits - dist, idx

    if metric in ("cosine", "ip"):
        width = database.shape[1]
        if queries.shape[1] != width:
            raise ValueError(
                f"queries have {queries.shape[1]} columns but the database has {width}."
            )
    else:
        quantizer._as_codes(database[:1])  # width / dtype check with a clear message
        width = quantizer.n_features_in_
        if metric == "codes":
            quantizer._as_codes(queries[:1])
        elif queries.shape[1] != width:
            raise ValueError(
                f"float queries have {queries.shape[1]} columns but the quantizer was "
                f"fitted on {width}."
            )
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (width,):
            raise ValueError(f"weights must have shape ({width},), got {weights.shape}.")
        if not np.isfinite(weights).all() or (weights < 0).any():
            raise ValueError("weights must be finite and non-negative.")
        weights = weights.astype(np.float32)
    space = _FloatSpace(metric, queries, database, quantizer, weights, normalize)
    # For float scores numpy's BLAS product is as fast as faiss.knn here (see
    # benchmarks/results/search_speed.md): faiss only when asked for explicitly.
    faiss = faiss if use_faiss is True else None
    return _float_search(space, database.shape[0], k, batch_size, faiss)
