"""skfusion.search: exact top-k over floats, packed bits and percentile codes."""

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from skfusion.lsh import RandomProjectionLSH
from skfusion.quantize import PercentileQuantizer
from skfusion.search import search, spread_weights

PATHS = [False, pytest.param(True, id="faiss")]


def _faiss_or_skip(use_faiss):
    if use_faiss:
        pytest.importorskip("faiss")
    return use_faiss


def _brute(S, k):
    """Reference: full float64 score matrix, (score desc, index asc)."""
    idx = np.broadcast_to(np.arange(S.shape[1]), S.shape)
    order = np.lexsort((idx, -S), axis=1)[:, :k]
    return np.take_along_axis(S, order, 1), order


def _data(n_db=700, n_q=40, d=16, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((n_q, d)).astype(np.float32),
        rng.standard_normal((n_db, d)).astype(np.float32),
    )


def _l2(X):
    return X / np.linalg.norm(X, axis=1, keepdims=True)


@pytest.mark.parametrize("use_faiss", PATHS)
@pytest.mark.parametrize("batch_size", [1, 33, 10_000])
def test_float_metrics_match_brute_force(use_faiss, batch_size):
    _faiss_or_skip(use_faiss)
    Q, D = _data()
    w = np.random.default_rng(3).uniform(0, 2, 16)
    for metric, S in [
        ("cosine", _l2(Q).astype(np.float64) @ _l2(D).T.astype(np.float64)),
        ("ip", Q.astype(np.float64) @ D.T.astype(np.float64)),
    ]:
        s, i = search(Q, D, 7, metric=metric, batch_size=batch_size, use_faiss=use_faiss)
        ref_s, ref_i = _brute(S, 7)
        np.testing.assert_array_equal(i, ref_i)
        # float32 sums of 16 products err by up to 16 * 6e-8 of the sum of |products|
        # on any CPU (summation order, FMA); 1e-5 leaves a margin for that bound.
        np.testing.assert_allclose(s, ref_s, rtol=1e-5)
    s, i = search(
        Q, D, 7, metric="ip", weights=w, batch_size=batch_size, use_faiss=use_faiss
    )
    ref_s, ref_i = _brute((Q * w).astype(np.float64) @ D.T.astype(np.float64), 7)
    np.testing.assert_array_equal(i, ref_i)


def test_auto_metric_is_cosine_for_floats():
    Q, D = _data()
    np.testing.assert_array_equal(
        search(Q, D * 5.0, 5)[1], search(Q, D, 5, metric="cosine")[1]
    )


@pytest.mark.parametrize("use_faiss", PATHS)
def test_ties_go_to_the_lower_index_on_both_paths(use_faiss):
    _faiss_or_skip(use_faiss)
    rng = np.random.default_rng(0)
    base = rng.standard_normal((20, 8)).astype(np.float32)
    D = np.tile(base, (40, 1))  # every row repeated 40 times, far beyond k2
    Q = base[:5] + 0.01 * rng.standard_normal((5, 8)).astype(np.float32)
    s, i = search(Q, D, 45, batch_size=64, use_faiss=use_faiss)
    best = np.argmax(_l2(Q) @ _l2(base).T, axis=1)
    for r in range(5):
        np.testing.assert_array_equal(i[r, :40], best[r] + 20 * np.arange(40))
        assert len(set(s[r, :40])) == 1
    bits = RandomProjectionLSH(64, random_state=0).fit(D).transform(D)
    s, i = search(bits[:3], bits, 45, batch_size=64, use_faiss=use_faiss)
    np.testing.assert_array_equal(i[:, :40], np.arange(3)[:, None] + 20 * np.arange(40))
    np.testing.assert_array_equal(s[:, :40], 64)


@pytest.mark.parametrize("batch_size", [5, 1000])
def test_faiss_and_numpy_paths_are_identical(batch_size):
    pytest.importorskip("faiss")
    Q, D = _data(n_db=900, d=24)
    q = PercentileQuantizer(bits=2).fit(D)
    w = spread_weights(q, 1.0)
    lsh = RandomProjectionLSH(128, random_state=0).fit(D)
    cases = [
        dict(queries=Q, database=D, metric="cosine"),
        dict(queries=Q, database=D, metric="ip"),
        dict(queries=lsh.transform(Q), database=lsh.transform(D), metric="hamming"),
        dict(queries=q.transform(Q), database=q.transform(D), metric="codes", quantizer=q),
        dict(
            queries=q.transform(Q),
            database=q.transform(D),
            metric="codes",
            quantizer=q,
            weights=w,
        ),
        dict(queries=Q, database=q.transform(D), metric="asymmetric", quantizer=q),
        dict(queries=Q, database=q.transform(D), metric="reconstruct", quantizer=q),
    ]
    for case in cases:
        a = search(k=12, batch_size=batch_size, use_faiss=False, **case)
        b = search(k=12, batch_size=batch_size, use_faiss=True, **case)
        np.testing.assert_array_equal(a[0], b[0], err_msg=case["metric"])
        np.testing.assert_array_equal(a[1], b[1], err_msg=case["metric"])


@pytest.mark.parametrize("pack", [False, True])
def test_code_metrics_match_their_definitions(pack):
    Q, D = _data(n_db=500, d=12)
    q = PercentileQuantizer(bits=2, pack=pack).fit(D)
    plain = PercentileQuantizer(bits=2).fit(D)
    cq, cd = plain.transform(Q) - 1.5, plain.transform(D) - 1.5
    w = spread_weights(q, 0.5)
    # Symmetric: centred codes against centred codes, weighted.
    s, i = search(
        q.transform(Q), q.transform(D), 9, quantizer=q, weights=w, use_faiss=False
    )
    ref_s, ref_i = _brute((cq * w).astype(np.float64) @ cd.T, 9)
    np.testing.assert_array_equal(i, ref_i)
    np.testing.assert_allclose(s, ref_s, rtol=1e-5)  # float32 sums, as above
    # "auto" with float queries and a quantizer is asymmetric.
    s, i = search(Q, q.transform(D), 9, quantizer=q, use_faiss=False)
    np.testing.assert_array_equal(i, _brute(Q.astype(np.float64) @ cd.T, 9)[1])
    rec = plain.inverse_transform(plain.transform(D)).astype(np.float64)
    s, i = search(Q, q.transform(D), 9, metric="reconstruct", quantizer=q)
    np.testing.assert_array_equal(i, _brute(Q.astype(np.float64) @ rec.T, 9)[1])


@pytest.mark.parametrize("metric", ["codes", "asymmetric", "reconstruct", "ip"])
def test_normalize_ranks_by_cosine_of_what_the_metric_compares(metric):
    Q, D = _data(n_db=400, d=10)
    q = PercentileQuantizer(bits=2).fit(D)
    w = spread_weights(q, 1.0)
    if metric == "ip":
        qv, dv, queries, db = Q, D, Q, D
    else:
        dv = (
            q.inverse_transform(q.transform(D))
            if metric == "reconstruct"
            else q.transform(D) - 1.5
        )
        qv = q.transform(Q) - 1.5 if metric == "codes" else Q
        queries = q.transform(Q) if metric == "codes" else Q
        db = q.transform(D)
    qv = qv.astype(np.float64) * w
    dv = dv.astype(np.float64)
    cos = (qv / np.linalg.norm(qv, axis=1, keepdims=True)) @ (
        dv / np.linalg.norm(dv, axis=1, keepdims=True)
    ).T
    kw = {} if metric == "ip" else {"quantizer": q}
    s, i = search(queries, db, 7, metric=metric, weights=w, normalize=True, **kw)
    ref_s, ref_i = _brute(cos, 7)
    np.testing.assert_allclose(s, ref_s, rtol=1e-5, atol=1e-6)
    assert (i == ref_i).mean() > 0.99  # float32 near-ties may swap


def test_normalize_is_rejected_for_hamming():
    bits = np.zeros((3, 2), dtype=np.uint8)
    with pytest.raises(ValueError, match="normalize=True is not supported"):
        search(bits, bits, 1, metric="hamming", normalize=True)


def test_spread_weights():
    X = np.random.default_rng(0).standard_normal((400, 3)) * [1.0, 4.0, 0.0]
    q = PercentileQuantizer(bits=2).fit(X)
    np.testing.assert_allclose(spread_weights(q, 0.0), [1.5, 1.5, 0.0])
    w = spread_weights(q, 1.0)
    assert w.mean() == pytest.approx(1.0) and w[2] == 0
    assert w[1] / w[0] == pytest.approx(q.std_[1] / q.std_[0], rel=1e-6)
    with pytest.raises(ValueError, match="fitted"):
        spread_weights(PercentileQuantizer())


def test_k_larger_than_database_is_clamped():
    Q, D = _data(n_db=6)
    s, i = search(Q, D, 10)
    assert s.shape == i.shape == (40, 6)
    assert (np.sort(i, axis=1) == np.arange(6)).all()


def test_memory_is_bounded_by_batch_size():
    Q, D = _data(n_db=200_000, n_q=300, d=8)
    tracemalloc.start()
    search(Q, D, 10, batch_size=2048, use_faiss=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    full = Q.shape[0] * D.shape[0] * 4  # the n_queries x n_db float32 matrix: 240 MB
    assert peak < full / 10


def test_bad_inputs():
    Q, D = _data()
    q = PercentileQuantizer(bits=2).fit(D)
    codes = q.transform(D)
    bits = np.zeros((5, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match="columns"):
        search(Q[:, :5], D)
    with pytest.raises(ValueError, match="bytes per row"):
        search(bits[:, :4], bits, metric="hamming")
    with pytest.raises(TypeError, match="quantizer"):
        search(Q, codes)  # float vs uint8 without the quantizer
    with pytest.raises(TypeError, match="dtype"):
        search(codes, D)
    with pytest.raises(TypeError, match="hamming"):
        search(Q, D, metric="hamming")
    with pytest.raises(ValueError, match="quantizer"):
        search(Q, codes, metric="asymmetric")
    with pytest.raises(TypeError, match="float queries"):
        search(codes, codes, metric="asymmetric", quantizer=q)
    with pytest.raises(ValueError, match="columns"):
        search(Q, codes[:, :3], quantizer=q)
    for k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="'k' parameter|k must"):
            search(Q, D, k)
    with pytest.raises(ValueError, match="metric"):
        search(Q, D, metric="l2")
    Qn = Q.copy()
    Qn[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        search(Qn, D)
    with pytest.raises(ValueError, match="NaN"):
        search(Q, np.vstack([D, np.full((1, 16), np.inf, np.float32)]))
    with pytest.raises(ValueError, match="weights"):
        search(Q, D, weights=np.ones(3))
    with pytest.raises(ValueError, match="non-negative"):
        search(Q, D, weights=-np.ones(16))
    with pytest.raises(ValueError, match="weights"):
        search(bits, bits, metric="hamming", weights=np.ones(64))
    with pytest.raises(ValueError, match="2-D"):
        search(Q[0], D)


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    n_bytes=st.integers(1, 20),
    n_db=st.integers(1, 80),
    k=st.integers(1, 90),
    batch_size=st.integers(1, 50),
)
def test_hamming_equals_brute_force(data, n_bytes, n_db, k, batch_size):
    # Few distinct byte values give many equal distances: ties are the hard part.
    byte = st.sampled_from([0, 1, 3, 255])
    D = data.draw(arrays(np.uint8, (n_db, n_bytes), elements=byte))
    Q = data.draw(arrays(np.uint8, (4, n_bytes), elements=byte))
    ub = lambda x: np.unpackbits(x, axis=1).astype(np.int64)  # noqa: E731
    dist = (ub(Q)[:, None, :] != ub(D)[None, :, :]).sum(-1)
    ref_s, ref_i = _brute(-dist.astype(np.float64), min(k, n_db))
    for use_faiss in (False, "auto"):
        s, i = search(Q, D, k, metric="hamming", batch_size=batch_size, use_faiss=use_faiss)
        np.testing.assert_array_equal(i, ref_i)
        np.testing.assert_array_equal(s, 8 * n_bytes + ref_s)


def test_memmap_database_gives_the_same_result(tmp_path):
    Q, D = _data(n_db=3000)
    mm = np.lib.format.open_memmap(tmp_path / "db.npy", "w+", np.float32, D.shape)
    mm[:] = D
    mm.flush()
    db = np.load(tmp_path / "db.npy", mmap_mode="r")
    a = search(Q, db, 10, batch_size=256)
    b = search(Q, D, 10, batch_size=256)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("use_faiss", PATHS)
@pytest.mark.parametrize("metric", ["cosine", "ip"])
@pytest.mark.parametrize("batch_size", [1, 3, 16, 39, 16384])
def test_equal_scores_are_ordered_by_lower_index_whatever_the_batch(
    use_faiss, metric, batch_size
):
    # Issue 9 item 2: main gave [[37, 38, 39]], and [[13, 14, 15]] with batch_size=16.
    _faiss_or_skip(use_faiss)
    D = np.ones((40, 4), "f4")
    _, idx = search(
        D[:1], D, k=3, metric=metric, batch_size=batch_size, use_faiss=use_faiss
    )
    np.testing.assert_array_equal(idx, [[0, 1, 2]])


@pytest.mark.parametrize("use_faiss", PATHS)
def test_one_bit_code_rankings_do_not_depend_on_batch_size_or_backend(use_faiss):
    _faiss_or_skip(use_faiss)
    Q, D = _data(n_db=600, n_q=50, d=16)
    q = PercentileQuantizer(bits=1).fit(D)
    cq, cd = q.transform(Q), q.transform(D)
    centred = (cd.astype(np.float64) - 0.5) * 2
    ref_s, ref_i = _brute(((cq.astype(np.float64) - 0.5) * 2) @ centred.T / 4, 10)
    for batch_size in (7, 16, 100, 16384):
        s, i = search(cq, cd, 10, quantizer=q, batch_size=batch_size, use_faiss=use_faiss)
        np.testing.assert_array_equal(i, ref_i, err_msg=f"batch_size={batch_size}")
        np.testing.assert_array_equal(s, ref_s)
        s, i = search(Q, cd, 10, quantizer=q, batch_size=batch_size, use_faiss=use_faiss)
        np.testing.assert_array_equal(
            i, _brute(Q.astype(np.float64) @ centred.T / 2, 10)[1]
        )


def test_top_block_keeps_the_lowest_tied_indices():
    from skfusion._engine import top_block as _top_block

    S = np.array([[1.0, 3.0, 3.0, 2.0, 3.0, 3.0], [0.0, 0.0, 0.0, 0.0, 5.0, 0.0]])
    vals, idx = _top_block(S, 3)
    order = np.argsort(idx, axis=1)
    np.testing.assert_array_equal(np.take_along_axis(idx, order, 1), [[1, 2, 4], [0, 1, 4]])
    np.testing.assert_array_equal(
        np.take_along_axis(vals, order, 1), [[3, 3, 3], [0, 0, 5]]
    )


def test_resolve_metric_asks_the_estimator():
    from skfusion.allocation import AllocatedQuantizer
    from skfusion.search import _resolve_metric

    Q, D = _data(n_db=100, d=8)
    lsh = RandomProjectionLSH(16, random_state=0).fit(D)
    alloc = AllocatedQuantizer(bit_budget=12).fit(D)
    bits, codes = lsh.transform(D), alloc.transform(D)
    assert _resolve_metric("auto", Q, D, None) == "cosine"
    assert _resolve_metric("auto", bits, bits, None) == "hamming"
    assert _resolve_metric("auto", bits, bits, lsh) == "hamming"
    assert _resolve_metric("auto", codes, codes, alloc) == "codes"
    assert _resolve_metric("auto", Q, codes, alloc) == "asymmetric"
    with pytest.raises(ValueError, match="does not apply"):
        _resolve_metric("asymmetric", Q, bits, lsh)


def test_rescore_gives_the_exact_order_from_float32_candidates():
    # The shared engine behind search() and CodeIndex.
    from skfusion._engine import VectorSpace as _VectorSpace
    from skfusion._engine import candidates as _candidates
    from skfusion._engine import rescore as _rescore

    Q, D = _data(n_db=300, n_q=5, d=8)
    space = _VectorSpace("ip", Q, D, None, None)
    cand_s, cand_i, dmax = _candidates(space, space.Q, 300, 20, 64, None, ties=False)
    s, i = _rescore(space, space.Q, cand_s, cand_i, dmax, 300, 7, 64)
    ref_s, ref_i = _brute(Q.astype(np.float64) @ D.T.astype(np.float64), 7)
    np.testing.assert_array_equal(i, ref_i)
    np.testing.assert_allclose(s, ref_s, rtol=1e-12)


def test_sparse_input_gets_a_clear_error():
    from scipy import sparse

    Q, D = _data(n_db=50, d=8)
    with pytest.raises(TypeError, match="sparse.*toarray"):
        search(sparse.csr_matrix(Q), D)
    with pytest.raises(TypeError, match="database must be a dense array"):
        search(Q, sparse.csr_matrix(D))


def test_unfitted_quantizer_raises_not_fitted():
    from sklearn.exceptions import NotFittedError

    Q, D = _data(n_db=50, d=8)
    codes = PercentileQuantizer().fit(D).transform(D)
    with pytest.raises(NotFittedError):
        search(codes, codes, quantizer=PercentileQuantizer())
    with pytest.raises(NotFittedError):
        spread_weights(PercentileQuantizer())


def test_public_functions_validate_their_parameters():
    from skfusion.allocation import allocate_bits
    from skfusion.quantize import pack_codes, unpack_codes

    Q, D = _data(n_db=50, d=8)
    with pytest.raises(ValueError, match="'quantizer' parameter"):
        search(Q, D, quantizer="percentile")
    with pytest.raises(ValueError, match="'use_faiss' parameter"):
        search(Q, D, use_faiss="yes")
    with pytest.raises(ValueError, match="'bits' parameter"):
        pack_codes(np.zeros((1, 2), np.uint8), 9)
    with pytest.raises(ValueError, match="'n_features' parameter"):
        unpack_codes(np.zeros((1, 2), np.uint8), 2, -1)
    with pytest.raises(ValueError, match="'max_bits' parameter"):
        allocate_bits([1.0, 2.0], 2, max_bits=0)
    with pytest.raises(ValueError, match="'quantizer' parameter"):
        spread_weights(object())
    with pytest.raises(ValueError, match="'quantizer' parameter"):
        spread_weights(RandomProjectionLSH(8).fit(D))  # sign bits have no spread


def test_lsh_codes_search_by_hamming_with_or_without_the_hasher():
    Q, D = _data(n_db=200, d=8)
    lsh = RandomProjectionLSH(12, random_state=0).fit(D)  # 12 bits: 2 bytes, padded
    bq, bd = lsh.transform(Q), lsh.transform(D)
    s, i = search(bq, bd, 5, quantizer=lsh)
    s0, i0 = search(bq, bd, 5)
    np.testing.assert_array_equal(i, i0)
    np.testing.assert_array_equal(s, s0 - 4)  # the 4 padding bits always agree
    assert s.max() <= 12


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n_db=st.integers(2, 70),
    d=st.integers(1, 6),
    k=st.integers(1, 80),
    batch_size=st.integers(1, 40),
)
def test_heavily_tied_scores_match_brute_force(seed, n_db, d, k, batch_size):
    rng = np.random.default_rng(seed)
    Q = rng.integers(0, 2, (5, d)).astype(np.float32)
    D = rng.integers(0, 2, (n_db, d)).astype(np.float32)
    kk = min(k, n_db)
    s, i = search(Q, D, k, metric="ip", batch_size=batch_size)
    np.testing.assert_array_equal(i, _brute(Q.astype(np.float64) @ D.T, kk)[1])
    q = PercentileQuantizer(bits=1).fit(rng.standard_normal((n_db, d)))
    cq, cd = q.transform(rng.standard_normal((5, d))), q.transform(D * 2 - 1)
    s, i = search(cq, cd, k, quantizer=q, batch_size=batch_size)
    ref = (cq.astype(np.float64) - 0.5) @ (cd.astype(np.float64) - 0.5).T
    np.testing.assert_array_equal(i, _brute(ref, kk)[1])


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_float16_rows_with_inf_or_nan_are_refused(bad):
    # float16 rows are checked by their exponent bits, not numpy's isfinite.
    Q, D = _data(n_db=200, d=8)
    D16 = D.astype(np.float16)
    D16[123, 5] = bad
    with pytest.raises(ValueError, match="database contains NaN or infinity"):
        search(Q, D16, 10, metric="ip")


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n_rows=st.integers(1, 60),
    k=st.integers(1, 70),
    half=st.booleans(),
)
def test_rescoring_near_ties_matches_float64_brute_force(seed, n_rows, k, half):
    # Rows that differ in their last bits: the float32 pre-scores cannot order them,
    # so everything within the error bound must get its exact float64 score.
    from skfusion._engine import VectorSpace, score_candidates

    rng = np.random.default_rng(seed)
    base = rng.standard_normal(24).astype(np.float32)
    D = base + rng.integers(-3, 4, (n_rows, 24)) * np.spacing(np.abs(base))
    D = D.astype(np.float16 if half else np.float32)
    Q = (base + 1e-3 * rng.standard_normal((4, 24))).astype(np.float32)
    space = VectorSpace("ip", Q, D, None, None)
    cand = np.stack([rng.permutation(n_rows) for _ in range(4)])
    cand[:, ::7] = -1  # padded entries sort last
    s, i = score_candidates(space, space.Q, cand, k)
    S = Q.astype(np.float64) @ D.astype(np.float32).astype(np.float64).T
    for q in range(4):
        keep = np.sort(cand[q][cand[q] >= 0])
        ref_s, ref_i = _brute(S[q : q + 1, keep], min(k, n_rows))
        n = ref_i.shape[1]
        np.testing.assert_array_equal(i[q, :n], keep[ref_i[0]])
        np.testing.assert_allclose(s[q, :n], ref_s[0], rtol=1e-12)
        assert (i[q, n:] == -1).all() and np.isneginf(s[q, n:]).all()


def test_probed_lists_break_ties_by_lower_list():
    from skfusion._engine import probe_lists

    rng = np.random.default_rng(0)
    distinct = rng.standard_normal((6, 16)).astype(np.float32)
    centroids = distinct[rng.integers(0, 6, 40)]  # every centroid repeated
    X = rng.standard_normal((50, 16)).astype(np.float32)
    S = X.astype(np.float64) @ distinct.T.astype(np.float64)
    S = S[:, [int(np.flatnonzero((distinct == c).all(1))[0]) for c in centroids]]
    for nprobe in (1, 3, 7, 40):
        np.testing.assert_array_equal(
            probe_lists(X, centroids, nprobe), _brute(S, nprobe)[1]
        )
