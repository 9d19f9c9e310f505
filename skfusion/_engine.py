"""The one scoring engine of :func:`~skfusion.search.search` and ``CodeIndex`` (internal).

Its names are public to the other skfusion modules, not to users.
One copy of every step of an exact or two-stage search lives here, so the one-stage
search and the index rank, tie-break and pad the same way.

Contract
--------
- A :class:`VectorSpace` turns queries and database rows into float32 vectors whose
  inner product is the score of a metric: ``space.Q`` holds the queries,
  ``space.rows(index)`` the transformed database rows of a slice or an index array,
  read on demand (a memmap is never loaded whole).
- Candidate generation keeps the best ``k2`` rows of every query by float32 score,
  reading the database in blocks of ``db_step`` rows, so memory is bounded by the block
  size and never by the database: :func:`candidates` scans every row,
  :meth:`CodeLists.search` only the inverted lists each query probes.
- Rescoring (:func:`score_candidates`, :func:`rescore`) computes exact float64 scores
  (:func:`exact_dot`) of the candidates. Results are ordered by score descending with
  ties to the lower index (:func:`select`) on every path, so a result does not depend on
  blocking, batching or which path found it.
- Index arrays may hold :data:`PAD` (-1), faiss's marker of a neighbour it could not
  find; a padded entry gets the score ``-inf`` and sorts last.
- Inverted lists (IVF): :func:`train_centroids` (spherical k-means, faiss) on float
  rows, :func:`assign_lists` / :func:`probe_lists` by inner product with the centroids
  (ties to the lower list), :func:`inverted_lists` groups rows by list, ascending
  within each list. :class:`CodeLists` holds the codes in faiss inverted lists and
  scans them in faiss with the scores of a code metric: float32 scores for byte
  groups (with every list probed it finds the rows :func:`candidates` finds, up to
  float32 rounding and ties at the last place), scores rounded by fast-scan's 8-bit
  look-up tables for 4-bit groups.
- Rescoring reads candidates as stored (float16 too) and widens them with
  :func:`to_float32`; float32 scores bound the exact ones, so only candidates that
  can reach the top ``k`` get float64 scores.
- faiss is optional: :func:`get_faiss` returns the module or None;
  :func:`require_faiss` returns it or raises an ImportError naming what to install.
"""

import numpy as np

__all__ = [
    "BLOCK_SCORES",
    "BLOCK_VALUES",
    "CODE_METRICS",
    "CodeLists",
    "PAD",
    "VectorSpace",
    "assign_lists",
    "candidates",
    "check_finite",
    "column_values",
    "exact_dot",
    "exact_row",
    "float_search",
    "get_faiss",
    "inverted_lists",
    "l2_normalize",
    "merge",
    "probe_lists",
    "require_faiss",
    "rescore",
    "score_candidates",
    "select",
    "to_float32",
    "top_block",
    "train_centroids",
]

# Score-matrix entries per block (16 MiB of float32 scores).
BLOCK_SCORES = 1 << 22
# Float64 entries of one rescoring block (queries x candidates x width): 32 MiB.
BLOCK_VALUES = 1 << 22
# Index of a missing neighbour (faiss's convention).
PAD = -1
CODE_METRICS = ("codes", "asymmetric", "reconstruct")


# -- faiss --------------------------------------------------------------------------
def get_faiss():
    """The faiss module, or None when it is not installed."""
    try:
        import faiss
    except ImportError:  # pragma: no cover - depends on the environment
        return None
    return faiss


def require_faiss(what="this"):
    """The faiss module; an ImportError saying what needs it when it is missing."""
    faiss = get_faiss()
    if faiss is None:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"{what} needs faiss, which is not installed: pip install "
            "'skfusion[faiss]' (faiss-cpu)."
        )
    return faiss


# -- rows ---------------------------------------------------------------------------
def l2_normalize(X):
    """Float32 rows scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.sqrt(np.einsum("ij,ij->i", X, X, dtype=np.float32))
    return np.ascontiguousarray(X / np.maximum(norms, np.float32(1e-30))[:, None])


def check_finite(name, X):
    """Raise a ValueError naming ``name`` when ``X`` holds NaN or infinity."""
    if X.dtype == np.float16:
        # numpy's float16 isfinite is slow: all-ones exponent bits mark inf and NaN.
        bad = ((X.view(np.uint16) & 0x7C00) == 0x7C00).any()
    else:
        bad = not np.isfinite(X).all()
    if bad:
        raise ValueError(f"{name} contains NaN or infinity; search needs finite rows.")


def to_float32(X):
    """Float32 copy of float16 rows (exact), by faiss's SIMD decoder when installed.

    numpy's float16 cast is about 2x slower, and rescoring casts every candidate row.
    """
    faiss = get_faiss()
    if X.dtype != np.float16 or faiss is None or X.ndim != 2 or X.size == 0:
        return np.asarray(X, dtype=np.float32)
    decoder = faiss.ScalarQuantizer(X.shape[1], faiss.ScalarQuantizer.QT_fp16)
    return decoder.decode(np.ascontiguousarray(X).view(np.uint8))


class VectorSpace:
    """Turns queries and database rows into float32 vectors whose dot is the score.

    Float metrics ("cosine", "ip") use the rows themselves; code metrics ask the
    estimator that made the codes: "codes" and "asymmetric" compare its
    ``code_vectors`` (each code replaced by its ``code_values_`` entry),
    "reconstruct" its ``inverse_transform``. ``weights`` scale the query vectors
    (after the cosine normalisation); ``normalize=True`` L2-normalises both sides.

    Attributes
    ----------
    Q : ndarray of shape (n_queries, width), dtype float32
        The query vectors.
    exact32 : bool
        Whether float32 scores are exact (half-integer code values whose dot
        products stay below 2**22): then no rounding slack is needed.
    """

    def __init__(self, metric, queries, database, quantizer, weights, normalize=False):
        self.metric = metric
        self.database = database
        self.quantizer = quantizer
        self.normalize = normalize and metric != "cosine"
        self.weights = weights
        self.exact32 = False
        if metric in CODE_METRICS:
            table = quantizer.code_values_
            top = float(np.abs(table).max()) if table.size else 0.0
            self.exact32 = (
                metric == "codes"
                and weights is None
                and not self.normalize
                and bool(np.all(table * 2 == np.round(table * 2)))
                and table.shape[0] * top**2 * 4 < 2**22
            )
        self.Q = self._queries(queries)

    def _queries(self, queries):
        if self.metric == "codes":
            Q = self.quantizer.code_vectors(queries)
        else:
            Q = np.array(queries, dtype=np.float32)
            if self.metric == "cosine":
                Q = l2_normalize(Q)
        if self.weights is not None:
            Q *= self.weights
        if self.normalize:
            Q = l2_normalize(Q)
        return np.ascontiguousarray(Q)

    def rows(self, index, dtype=np.float32):
        """Transformed database rows (a slice or an index array).

        The values are float32 ones, returned as ``dtype``: ``np.float64`` widens
        them exactly; ``None`` keeps float16 or float32 storage as it is where no
        normalisation is needed (float32 otherwise), which skips a copy.
        """
        rows = self.database[index]
        if self.metric in ("cosine", "ip"):
            scale = self.metric == "cosine" or self.normalize
            # float16/float32 widen exactly; anything else is rounded to float32 first.
            direct = not scale and rows.dtype in (np.float16, np.float32)
            keep = rows.dtype if dtype is None else dtype
            D = np.asarray(rows, dtype=keep if direct else np.float32)
            # Checked block by block as read, so a memmap is never loaded whole.
            check_finite("database", D)
            if scale:
                D = l2_normalize(D)
        else:
            if self.metric == "reconstruct":
                D = self.quantizer.inverse_transform(rows)
            else:
                D = self.quantizer.code_vectors(rows)
            if self.normalize:
                D = l2_normalize(D)
        if dtype is None:
            dtype = D.dtype if D.dtype in (np.float16, np.float32) else np.float32
        return np.ascontiguousarray(D, dtype=dtype)

    def gather(self, index, dtype=np.float32):
        """:meth:`rows` of an index array, read in ascending order (file order)."""
        order = np.argsort(index, kind="stable")
        D = self.rows(index[order], dtype)
        out = np.empty_like(D)
        out[order] = D
        return out


# -- ordering -----------------------------------------------------------------------
def exact_dot(Q, D):
    """Float64 scores of row pairs: elementwise products summed along the last axis.

    Products of float32 values are exact in float64, and ``einsum`` sums each pair of
    contiguous last-axis rows the same way whatever the number of rows (5x faster than
    multiplying then summing), so a pair's score does not depend on batching or on
    which path found it. Operands whose last axis is strided are copied first.
    """
    if Q.strides[-1] != Q.itemsize:
        Q = np.ascontiguousarray(Q)
    if D.strides[-1] != D.itemsize:
        D = np.ascontiguousarray(D)
    return np.einsum("...i,...i->...", Q, D)


def select(scores, idx, k):
    """Best ``k`` of each row by (score descending, index ascending)."""
    order = np.lexsort((idx, -scores), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(idx, order, 1)


def merge(best_s, best_i, s, i, k):
    """:func:`select` over two candidate lists side by side."""
    return select(np.concatenate([best_s, s], 1), np.concatenate([best_i, i], 1), k)


def top_block(S, k, ties=True):
    """The ``k`` best entries of each row of ``S``, in no particular order.

    With ``ties=True`` the best by (score desc, column asc): ``argpartition`` alone
    picks arbitrary entries among those tied with the ``k``-th score, so rows where it
    left out a tied entry are redone with the lowest columns, which makes the result
    independent of how the database was cut into blocks. ``ties=False`` skips that pass
    (for candidate lists whose boundary ties are re-checked exactly anyway).
    """
    n = S.shape[1]
    if n <= k:
        return S, np.broadcast_to(np.arange(n), S.shape)
    part = np.argpartition(S, n - k, axis=1)[:, n - k :]
    vals = np.take_along_axis(S, part, 1)
    if not ties:
        return vals, part
    kth = vals.min(axis=1, keepdims=True)
    dropped = (S == kth).sum(axis=1) > (vals == kth).sum(axis=1)
    rows = np.flatnonzero(dropped)
    if rows.size:
        sub, t = S[rows], kth[rows]
        need = k - (sub > t).sum(axis=1)  # tied entries each such row keeps
        r, c = np.nonzero(sub == t)  # row-major: each row's tied columns, ascending
        rank = np.arange(r.size) - np.searchsorted(r, np.arange(rows.size))[r]
        lowest = rank < need[r]  # each row's `need` lowest tied columns
        above = np.nonzero(sub > t)
        owner = np.concatenate([above[0], r[lowest]])
        cols = np.concatenate([above[1], c[lowest]])
        cols = cols[np.argsort(owner, kind="stable")].reshape(rows.size, k)
        part[rows] = cols
        vals[rows] = np.take_along_axis(sub, cols, 1)
    return vals, part


# -- exact candidates and rescoring -------------------------------------------------
def candidates(space, Qb, n_db, k2, db_step, faiss=None, ties=True):
    """Best ``k2`` database rows of every query by float32 score, scanning every row.

    With ``ties=True`` (numpy only) equal scores at the boundary go to the lower index.
    Returns the float32 scores, the indices (both best first) and the largest
    absolute database value seen (for the rounding bound of :func:`rescore`).
    """
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
                # Prune: blocks come in index order, so only entries above the current
                # k2-th best can enter.
                keep = (S > cand_s[:, -1:]).any(axis=1)
                if not keep.any():
                    continue
            s, i = top_block(S, k2, ties=ties)
        cand_s, cand_i = merge(cand_s, cand_i, s, i + ds, k2)
    return cand_s, cand_i, dmax


def score_candidates(space, Q, cand_i, k):
    """Exact float64 top-``k`` of each query among its candidate rows.

    ``Q`` holds the query vectors of ``space`` (rows of ``space.Q``); ``cand_i`` the
    candidate indices, in any order, :data:`PAD` where a list has fewer. Returns the
    float64 scores and indices, best first, ties to the lower index; padded entries
    (score ``-inf``, index -1) come last. Rows are read in ascending order, in blocks
    of at most :data:`BLOCK_VALUES` values.

    Lists longer than ``4 * k``: float32 scores of every candidate (rows as stored,
    float16 included) bound the exact ones; only candidates within twice the float32
    error of the ``k``-th best can be in the exact top ``k``, and only those get
    :func:`exact_dot` scores. Shorter lists are scored exactly whole.
    """
    m, k2 = cand_i.shape
    width = Q.shape[1]
    kk = min(k, k2)
    out_s = np.empty((m, kk), dtype=np.float64)
    out_i = np.empty((m, kk), dtype=np.int64)
    step = max(1, BLOCK_VALUES // max(k2 * width, 1))
    for s in range(0, m, step):
        ci, Qb = cand_i[s : s + step], Q[s : s + step]
        valid = ci != PAD
        flat = np.where(valid, ci, 0).ravel()
        if k2 <= 4 * kk:
            # Short lists (search()'s): most candidates may count; score them all.
            D64 = space.gather(flat, np.float64).reshape(ci.shape[0], k2, width)
            scores = exact_dot(Qb[:, None, :].astype(np.float64), D64)
            scores[~valid] = -np.inf
            out_s[s : s + step], out_i[s : s + step] = select(scores, ci, kk)
            continue
        D = to_float32(space.gather(flat, None)).reshape(ci.shape[0], k2, width)
        approx = np.einsum("qd,qkd->qk", Qb, D)
        approx[~valid] = -np.inf
        # |float32 - exact| <= (width + 1) * 2**-24 * sum |q_i d_i| (products and
        # sums rounded once each); doubled for safety.
        dmax = max(float(D.max()), -float(D.min())) if D.size else 0.0
        tol = 2.0 * (width + 1) * 2.0**-24 * np.abs(Qb).sum(axis=1) * dmax
        kth = np.partition(approx, k2 - kk, axis=1)[:, k2 - kk]
        r, c = np.nonzero(valid & (approx >= (kth - 2.0 * tol)[:, None]))
        scores = np.full(ci.shape, -np.inf)
        scores[r, c] = exact_dot(Qb[r].astype(np.float64), D[r, c].astype(np.float64))
        out_s[s : s + step], out_i[s : s + step] = select(scores, ci, kk)
    return out_s, out_i


def rescore(space, Qb, cand_s, cand_i, dmax, n_db, k, batch_size, tie_exact=False):
    """Exact float64 top-``k`` from the float32 candidates of :func:`candidates`.

    A row outside the candidates has a float32 score at most the last candidate's, so
    its exact score is at most that plus the float32 error bound; a query whose k-th
    exact score is within that bound (ties included) is re-scored over the whole
    database. ``tie_exact=True`` says the float32 scores are exact and the candidates
    took boundary ties by lower index: then no row outside them can enter the top
    ``k``, and nothing is re-scored.
    """
    k2 = cand_i.shape[1]
    best_s, best_i = score_candidates(space, Qb, cand_i, k)
    if k2 < n_db and not tie_exact:
        tol = 0.0
        if not space.exact32:
            tol = 4.0 * Qb.shape[1] * 2.0**-24 * np.abs(Qb).sum(axis=1) * dmax
        risky = np.flatnonzero(cand_s[:, -1] + tol >= best_s[:, -1] - tol)
        for r in risky:
            q64 = Qb[r].astype(np.float64)
            best_s[r], best_i[r] = exact_row(space, q64, n_db, k, batch_size)
    return best_s, best_i


def exact_row(space, q64, n_db, k, batch_size):
    """Exact top-k of one query by float64 scoring of every database row."""
    best_s = np.zeros((1, 0))
    best_i = np.zeros((1, 0), dtype=np.int64)
    for ds in range(0, n_db, batch_size):
        D64 = space.rows(slice(ds, ds + batch_size), np.float64)
        s = exact_dot(q64[None, :], D64)[None, :]
        top_s, top_i = top_block(s, k, ties=True)
        best_s, best_i = merge(best_s, best_i, top_s, top_i + ds, k)
    return best_s[0], best_i[0]


def float_search(space, n_db, k, batch_size, faiss=None):
    """Exact top-``k`` of every query of ``space``: candidates, then exact rescoring."""
    Q = space.Q
    m_all = Q.shape[0]
    k2 = min(n_db, k + max(k, 16))
    q_step = max(1, min(m_all, BLOCK_SCORES // batch_size))
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
        # Exact float32 scores (centred codes) with lower-index ties need no
        # exact fallback; otherwise near-ties at the boundary are re-scored exactly.
        tie_exact = space.exact32 and faiss is None
        cand_s, cand_i, dmax = candidates(space, Qb, n_db, k2, db_step, faiss, tie_exact)
        best = rescore(space, Qb, cand_s, cand_i, dmax, n_db, k, batch_size, tie_exact)
        out_s[qs : qs + Qb.shape[0]], out_i[qs : qs + Qb.shape[0]] = best
    return out_s, out_i


# -- inverted lists (IVF) -----------------------------------------------------------
def train_centroids(X, nlist, seed, faiss):
    """``nlist`` unit-norm centroids of ``X`` (spherical k-means, faiss).

    Unit-norm centroids make assignment and probing by inner product the same as by
    cosine, so lists stay balanced whatever the row norms. The caller checks
    ``nlist <= n_rows``; faiss's warning about fewer than 39 rows per centroid is
    silenced (it prints to stderr, out of reach of ``warnings``).
    """
    X = np.ascontiguousarray(X, dtype=np.float32)
    km = faiss.Kmeans(
        X.shape[1],
        int(nlist),
        niter=20,
        seed=int(seed),
        spherical=True,
        min_points_per_centroid=1,
    )
    km.train(X)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def probe_lists(X, centroids, nprobe):
    """The ``nprobe`` lists of highest inner product for every row, int64.

    Ties go to the lower list; rows are done in blocks of :data:`BLOCK_SCORES` scores.
    faiss's k-selection (4x faster than numpy's ``argpartition``) picks the lists
    when it is installed; rows with a tie at the ``nprobe``-th place are redone in
    numpy, which keeps the lower lists.
    """
    faiss = get_faiss()
    nlist = centroids.shape[0]
    nprobe = min(int(nprobe), nlist)
    out = np.empty((X.shape[0], nprobe), dtype=np.int64)
    step = max(1, BLOCK_SCORES // max(nlist, 1))
    for s in range(0, X.shape[0], step):
        Xb = np.ascontiguousarray(X[s : s + step], dtype=np.float32)
        if faiss is not None and nprobe < nlist:
            vals, idx = faiss.knn(Xb, centroids, nprobe + 1, faiss.METRIC_INNER_PRODUCT)
            tied = vals[:, nprobe - 1] == vals[:, nprobe]
            vals, idx = vals[:, :nprobe], idx[:, :nprobe]
            if tied.any():
                vals[tied], idx[tied] = top_block(Xb[tied] @ centroids.T, nprobe)
        else:
            vals, idx = top_block(Xb @ centroids.T, nprobe, ties=True)
        out[s : s + step] = select(vals, idx.astype(np.int64), nprobe)[1]
    return out


def assign_lists(X, centroids):
    """The list of every row (highest inner product, ties to the lower list), int32."""
    return probe_lists(X, centroids, 1)[:, 0].astype(np.int32)


def inverted_lists(assignment, nlist):
    """Rows grouped by list: ``order[offsets[j]:offsets[j + 1]]`` are list ``j``'s rows.

    Rows of a list are in ascending order; ``order`` is int32 while the indices fit.
    """
    order = np.argsort(assignment, kind="stable")
    if assignment.size < 2**31:
        order = order.astype(np.int32)
    counts = np.bincount(assignment, minlength=nlist)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return order, offsets


def column_values(metric, quantizer):
    """What every code of every column stands for under a code ``metric``.

    Returns ``table`` of shape (2**max(bits_), n_codes), float32: ``table[c, j]`` is
    the value of code ``c`` in column ``j`` (codes past a column's range repeat its top
    code), asked of the code transformer itself (``code_vectors``, or
    ``inverse_transform`` for "reconstruct"). Raises ValueError when the decoding is
    not one value per (column, code), checked on random rows.
    """
    bits = np.asarray(quantizer.bits_, dtype=np.int64)
    decode = (
        quantizer.inverse_transform if metric == "reconstruct" else quantizer.code_vectors
    )
    top = (1 << bits) - 1
    levels = np.minimum(np.arange(1 << int(bits.max(initial=0)))[:, None], top)
    table = np.asarray(decode(levels.astype(np.uint8)), dtype=np.float32)
    probe = np.random.default_rng(0).integers(0, top + 1, size=(64, bits.size))
    got = np.asarray(decode(probe.astype(np.uint8)), dtype=np.float32)
    if table.shape != (levels.shape[0], bits.size) or not np.array_equal(
        got, table[probe, np.arange(bits.size)]
    ):
        raise ValueError(
            f"{type(quantizer).__name__} codes under metric {metric!r} are not one "
            "value per column and code, which inverted lists of codes need; use "
            "shortlist_index='exact'."
        )
    return table


class CodeLists:
    """Inverted lists of codes, scanned by faiss with the code metric's scores.

    Codes are grouped: the columns (those with at least one bit) are packed
    first-fit decreasing into groups of at most ``width`` bits, and each group becomes
    one sub-quantizer of a faiss product quantizer (no residuals, inner product)
    whose centroids are the group's column values (:func:`column_values`). Scanning a
    list then sums, for each code, the query's products with the code's column
    values: the score of the code metric, less the constant of 0-bit columns.

    When every column has at most 4 bits the groups are 4 bits wide and the lists
    are a faiss ``IndexIVFPQFastScan``: SIMD scanning of blocks of 32 codes with
    look-up tables rounded to 8 bits, so the scores are approximate (a shortlist
    ranking; the candidates are rescored exactly) and a scan is about 10x faster
    than with 8-bit groups. Wider columns take 8-bit groups in an ``IndexIVFPQ``
    whose scores are the float32 scores of the metric. Either way the lists hold one
    code of ``code_size`` bytes plus faiss's 8-byte id per row and are the only copy
    of the codes in RAM: :meth:`codes` rebuilds them. Rows are filed by the caller
    (``add``'s ``assignment``) and queries probe the lists the caller picks, so the
    lists' centroids may live in another space than the codes.

    Parameters
    ----------
    table : ndarray of shape (n_levels, n_codes)
        :func:`column_values` of the metric.
    bits : ndarray of shape (n_codes,)
        Bits of every code column.
    nlist : int
        Number of lists.
    faiss : module
    """

    def __init__(self, table, bits, nlist, faiss):
        bits = np.asarray(bits, dtype=np.int64)
        if bits.max(initial=0) > 8:
            raise ValueError("Inverted lists of codes take at most 8 bits per column.")
        self.fast = bits.max(initial=0) <= 4
        width = 4 if self.fast else 8
        cols = [int(j) for j in np.argsort(-bits, kind="stable") if bits[j] > 0]
        groups, room = [], []
        for j in cols:
            fit = next((g for g, r in enumerate(room) if r >= bits[j]), None)
            if fit is None:
                groups.append([])
                room.append(width)
                fit = len(groups) - 1
            groups[fit].append(j)
            room[fit] -= int(bits[j])
        m = max(len(groups), 2 if self.fast else 1)
        m += m % 2 if self.fast else 0  # fast-scan codes are whole bytes
        dsub = max((len(g) for g in groups), default=1)
        self.bits = bits
        self.nlist = int(nlist)
        # slot (group, position) -> column, -1 for padding; shift of each slot's bits.
        self.slot_col = np.full((m, dsub), -1, dtype=np.int64)
        self.slot_shift = np.zeros((m, dsub), dtype=np.int64)
        centroids = np.zeros((m, 1 << width, dsub), dtype=np.float32)
        code = np.arange(1 << width)
        for g, group in enumerate(groups):
            shift = 0
            for s, j in enumerate(group):
                self.slot_col[g, s], self.slot_shift[g, s] = j, shift
                level = (code >> shift) & ((1 << int(bits[j])) - 1)
                centroids[g, :, s] = table[level, j]
                shift += int(bits[j])
        d = m * dsub
        # The lists' own coarse quantizer is never asked: queries come pre-assigned.
        kind = faiss.IndexIVFPQFastScan if self.fast else faiss.IndexIVFPQ
        self.index = kind(
            faiss.IndexFlatIP(d), d, self.nlist, m, width, faiss.METRIC_INNER_PRODUCT
        )
        self.index.by_residual = False
        faiss.copy_array_to_vector(centroids.ravel(), self.index.pq.centroids)
        self.index.is_trained = True

    @property
    def ntotal(self):
        return int(self.index.ntotal)

    @property
    def code_size(self):
        """RAM bytes of one row's code in the lists (without its 8-byte id)."""
        return int(self.index.code_size)

    def _encode(self, codes):
        """faiss's codes of unpacked ``codes``: one byte per group, or two nibbles."""
        out = np.zeros((codes.shape[0], self.slot_col.shape[0]), dtype=np.uint8)
        for (g, s), j in np.ndenumerate(self.slot_col):
            if j >= 0:
                out[:, g] |= codes[:, j] << np.uint8(self.slot_shift[g, s])
        if self.fast:  # sub-quantizer 2i in the low nibble of byte i
            out = out[:, 0::2] | (out[:, 1::2] << np.uint8(4))
        return np.ascontiguousarray(out)

    def _decode(self, flat):
        """Unpacked codes of faiss's codes (inverse of :meth:`_encode`)."""
        if self.fast:
            groups = np.empty((flat.shape[0], 2 * flat.shape[1]), dtype=np.uint8)
            groups[:, 0::2], groups[:, 1::2] = flat & np.uint8(15), flat >> np.uint8(4)
            flat = groups
        codes = np.zeros((flat.shape[0], self.bits.size), dtype=np.uint8)
        for (g, s), j in np.ndenumerate(self.slot_col):
            if j >= 0:
                mask = np.uint8((1 << int(self.bits[j])) - 1)
                codes[:, j] = (flat[:, g] >> np.uint8(self.slot_shift[g, s])) & mask
        return codes

    def _read_list(self, j):
        """(ids, faiss codes) of list ``j``, in list order."""
        faiss, inv = require_faiss(), self.index.invlists
        count, size = inv.list_size(j), self.code_size
        if count == 0:
            return np.zeros(0, dtype=np.int64), np.zeros((0, size), dtype=np.uint8)
        ids = faiss.rev_swig_ptr(inv.get_ids(j), count).copy()
        if not self.fast:
            flat = faiss.rev_swig_ptr(inv.get_codes(j), count * size).copy()
            return ids, flat.reshape(count, size)
        packer = self.index.get_CodePacker()
        nvec, block = packer.nvec, packer.block_size
        n_blocks = -(-count // nvec)
        raw = faiss.rev_swig_ptr(inv.get_codes(j), n_blocks * block)
        flat = np.empty((n_blocks * nvec, size), dtype=np.uint8)
        for b in range(n_blocks):
            packer.unpack_all(
                faiss.swig_ptr(raw[b * block : (b + 1) * block]),
                faiss.swig_ptr(flat[b * nvec : (b + 1) * nvec]),
            )
        return ids, flat[:count]

    def _pack_blocks(self, flat):
        """Fast-scan codes ``flat`` packed into faiss's blocks of ``nvec`` rows."""
        faiss = require_faiss()
        packer = self.index.get_CodePacker()
        nvec, block = packer.nvec, packer.block_size
        n_blocks = -(-flat.shape[0] // nvec)
        padded = np.zeros((n_blocks * nvec, flat.shape[1]), dtype=np.uint8)
        padded[: flat.shape[0]] = flat
        packed = np.zeros(n_blocks * block, dtype=np.uint8)
        for b in range(n_blocks):
            packer.pack_all(
                faiss.swig_ptr(padded[b * nvec : (b + 1) * nvec]),
                faiss.swig_ptr(packed[b * block : (b + 1) * block]),
            )
        return packed

    def add(self, codes, assignment):
        """Append unpacked ``codes`` (ids from ``ntotal`` on) to lists ``assignment``.

        Byte-group lists are appended to; a fast-scan list that gains rows is
        rewritten whole, since faiss's block lists take packed blocks into an empty
        list only.
        """
        faiss, inv = require_faiss(), self.index.invlists
        flat = self._encode(codes)
        ids = np.arange(self.ntotal, self.ntotal + codes.shape[0], dtype=np.int64)
        order = np.argsort(assignment, kind="stable")
        bounds = np.searchsorted(assignment[order], np.arange(self.nlist + 1))
        for j in np.flatnonzero(np.diff(bounds)):
            rows = order[bounds[j] : bounds[j + 1]]
            list_ids, list_flat = ids[rows], flat[rows]
            if self.fast:
                old_ids, old_flat = self._read_list(int(j))
                list_ids = np.concatenate([old_ids, list_ids])
                list_flat = self._pack_blocks(np.concatenate([old_flat, list_flat]))
                inv.resize(int(j), 0)
            list_ids = np.ascontiguousarray(list_ids, dtype=np.int64)
            list_flat = np.ascontiguousarray(list_flat, dtype=np.uint8)
            inv.add_entries(
                int(j),
                list_ids.size,
                faiss.swig_ptr(list_ids),
                faiss.swig_ptr(list_flat),
            )
        self.index.ntotal += codes.shape[0]

    def codes(self):
        """(unpacked codes in row order, list of every row), rebuilt from the lists."""
        n = self.ntotal
        flat = np.empty((n, self.code_size), dtype=np.uint8)
        assignment = np.empty(n, dtype=np.int32)
        for j in range(self.nlist):
            ids, list_flat = self._read_list(j)
            flat[ids] = list_flat
            assignment[ids] = j
        return self._decode(flat), assignment

    def search(self, Q, lists, k2):
        """Best ``k2`` rows of every query among its ``lists`` (:data:`PAD` fills).

        ``Q``: the query vectors of the metric (one column per code column). Rows
        come best first by the lists' scores, ties by lower index; a tie at the
        ``k2``-th place may keep any of the tied rows.
        """
        cols = self.slot_col.ravel()
        used = cols >= 0
        Qg = np.zeros((Q.shape[0], cols.size), dtype=np.float32)
        Qg[:, used] = Q[:, cols[used]]
        self.index.nprobe = lists.shape[1]
        D, idx = self.index.search_preassigned(
            Qg, int(k2), lists, np.zeros(lists.shape, dtype=np.float32)
        )
        # faiss's heap leaves ties in any order: best first, then lower index (pads
        # stay last).
        D = np.where(idx == PAD, -np.inf, D)
        order = np.lexsort((idx, -D), axis=-1)
        return np.take_along_axis(idx, order, axis=-1).astype(np.int64)
