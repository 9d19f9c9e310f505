"""AllocatedQuantizer, allocate_bits and searching allocated codes."""

import subprocess
import sys

import joblib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from skfusion.allocation import AllocatedQuantizer, allocate_bits
from skfusion.quantize import PercentileQuantizer
from skfusion.search import search


def _data(n=600, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)) * np.geomspace(8, 0.25, d)).astype(np.float32)


@parametrize_with_checks(
    [
        AllocatedQuantizer(bit_budget=1),
        AllocatedQuantizer(bit_budget=2, max_bits=2, pack=True, subsample=50),
    ]
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_allocation_is_greedy_reverse_water_filling():
    var = np.array([16.0, 4.0, 1.0, 0.1])
    # Gains: 16, 4, 1 | 4, 1, .25 | 1, .25, .0625 | .1, ...; ties to the lower index.
    np.testing.assert_array_equal(allocate_bits(var, 1), [1, 0, 0, 0])
    np.testing.assert_array_equal(allocate_bits(var, 3), [2, 1, 0, 0])
    np.testing.assert_array_equal(allocate_bits(var, 5), [3, 2, 0, 0])
    np.testing.assert_array_equal(allocate_bits(var, 6), [3, 2, 1, 0])
    np.testing.assert_array_equal(allocate_bits(var, 6, max_bits=2), [2, 2, 2, 0])
    # A lower power spreads the bits over more dimensions.
    np.testing.assert_array_equal(
        allocate_bits(var, 6, allocation_power=0.25), [2, 2, 1, 1]
    )


@settings(max_examples=50, deadline=None)
@given(
    var=st.lists(st.floats(0, 1e6), min_size=1, max_size=30),
    max_bits=st.integers(1, 8),
    data=st.data(),
)
def test_allocation_spends_the_budget_and_follows_variance(var, max_bits, data):
    budget = data.draw(st.integers(1, len(var) * max_bits))
    bits = allocate_bits(var, budget, max_bits=max_bits)
    assert bits.sum() == budget
    assert bits.min() >= 0 and bits.max() <= max_bits
    order = np.argsort(-np.asarray(var), kind="stable")
    assert (np.diff(bits[order]) <= 0).all()


def test_allocation_follows_variance_where_gains_underflow():
    # 5e-324 (the smallest float) times 4**-1 rounds to 0, the gain of a zero variance:
    # the tie must still go to the larger variance, not to the lower index.
    np.testing.assert_array_equal(allocate_bits([0.0, 5e-324], 3, max_bits=2), [1, 2])
    np.testing.assert_array_equal(
        allocate_bits([0.0, 5e-324, 1.0], 4, max_bits=2), [0, 2, 2]
    )


def test_codes_are_percentile_codes_of_each_width():
    X = _data()
    q = AllocatedQuantizer(bit_budget=12, max_bits=3).fit(X)
    assert q.bits_.sum() == q.n_bits_ == 12
    codes = q.transform(X)
    for j, b in enumerate(q.bits_):
        if b == 0:
            assert (codes[:, j] == 0).all()
            continue
        ref = PercentileQuantizer(bits=int(b)).fit(X[:, [j]]).transform(X[:, [j]])
        np.testing.assert_array_equal(codes[:, [j]], ref)
        assert np.bincount(codes[:, j]).size == 1 << b


def test_variance_order_not_column_order_decides():
    X = _data()[:, ::-1]  # largest variance last
    q = AllocatedQuantizer(bit_budget=10).fit(X)
    assert q.bits_[-1] == q.bits_.max() and q.bits_[0] == 0


@pytest.mark.parametrize("budget", [1, 7, 8, 9, 13, 24])
def test_pack_is_exactly_the_budget_and_round_trips(budget):
    X = _data(300)
    q = AllocatedQuantizer(bit_budget=budget, max_bits=3).fit(X)
    codes = q.transform(X)
    packed = q.set_params(pack=True).transform(X)
    assert packed.shape == (300, -(-budget // 8))
    np.testing.assert_array_equal(q.to_codes(packed), codes)
    np.testing.assert_array_equal(q.inverse_transform(packed), q.inverse_transform(codes))


def test_packed_bit_stream_layout():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 3)) * [4.0, 2.0, 1.0]
    q = AllocatedQuantizer(bit_budget=6, max_bits=3).fit(X)
    assert list(q.bits_) == [3, 2, 1]
    codes = np.array([[5, 2, 1]], dtype=np.uint8)  # 101 10 1 -> 10110100
    stream = q.to_packed(codes)
    np.testing.assert_array_equal(stream, [[0b10110100]])


def test_inverse_transform_reconstructs_better_with_more_bits():
    X = _data(2000)
    errs = [
        np.mean(
            (
                AllocatedQuantizer(bit_budget=b)
                .fit(X)
                .inverse_transform(AllocatedQuantizer(bit_budget=b).fit(X).transform(X))
                - X
            )
            ** 2
        )
        for b in (4, 8, 16)
    ]
    assert errs[0] > errs[1] > errs[2]


def test_code_values_are_rank_centres_scaled_by_spread():
    X = _data()
    q = AllocatedQuantizer(bit_budget=10, spread=0.0).fit(X)
    j = int(np.argmax(q.bits_))
    nb = 1 << q.bits_[j]
    np.testing.assert_allclose(q.code_values_[j, :nb], (np.arange(nb) + 0.5) / nb - 0.5)
    q1 = AllocatedQuantizer(bit_budget=10, spread=1.0).fit(X)
    coded = q1.bits_ > 0
    ratio = q1.code_values_[coded, 0] / q.code_values_[coded, 0]
    std = q1.std_[coded]
    np.testing.assert_allclose(ratio / ratio[0], std / std[0], rtol=1e-5)
    assert (q1.code_values_[~coded] == 0).all()


def test_gaussian_buckets_use_lloyd_max_masses_and_levels():
    X = _data(4000)
    q = AllocatedQuantizer(bit_budget=16, max_bits=2, buckets="gaussian", spread=0.0)
    q.fit(X)
    codes = q.transform(X)
    j = int(np.flatnonzero(q.bits_ == 2)[0])
    share = np.bincount(codes[:, j], minlength=4) / len(X)
    # Lloyd-Max for N(0, 1) at 2 bits: thresholds 0, +-0.9816 -> 16.3% / 33.7% masses.
    np.testing.assert_allclose(share, [0.163, 0.337, 0.337, 0.163], atol=0.002)
    levels = q.code_values_[j, :4] / q.code_values_[j, 3]
    np.testing.assert_allclose(
        levels, np.array([-1.5104, -0.4528, 0.4528, 1.5104]) / 1.5104, atol=1e-3
    )
    # One bit: the median split either way.
    e = AllocatedQuantizer(bit_budget=3, max_bits=1).fit(X).transform(X)
    g = AllocatedQuantizer(bit_budget=3, max_bits=1, buckets="gaussian").fit(X).transform(X)
    np.testing.assert_array_equal(e, g)


def test_max_features_keeps_bits_on_the_leading_columns():
    X = _data()[:, ::-1]  # largest variance last
    q = AllocatedQuantizer(bit_budget=6, max_bits=2, max_features=3).fit(X)
    np.testing.assert_array_equal(q.bits_, [2, 2, 2, 0, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="max_features=3"):
        AllocatedQuantizer(bit_budget=7, max_bits=2, max_features=3).fit(X)


@pytest.mark.parametrize("metric", ["codes", "asymmetric"])
@pytest.mark.parametrize("normalize", [False, True])
def test_search_scores_code_values(metric, normalize):
    X = _data(1200)
    q = AllocatedQuantizer(bit_budget=14, pack=True).fit(X[:800])
    db = q.transform(X[:800])
    queries = X[800:850] if metric == "asymmetric" else q.transform(X[800:850])
    scores, idx = search(queries, db, 5, metric=metric, quantizer=q, normalize=normalize)
    D = q.code_values_[np.arange(8), q.to_codes(db)].astype(np.float64)
    Q = (
        X[800:850].astype(np.float64)
        if metric == "asymmetric"
        else q.code_values_[np.arange(8), q.to_codes(queries)].astype(np.float64)
    )
    if normalize:
        D /= np.linalg.norm(D, axis=1, keepdims=True)
        Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    S = Q @ D.T
    np.testing.assert_allclose(scores, -np.sort(-S, axis=1)[:, :5], rtol=1e-5, atol=1e-6)


def test_allocation_beats_uniform_width_at_equal_bits():
    rng = np.random.default_rng(1)
    # Correlated data with a decaying spectrum, like decoder / PCA outputs.
    Z = rng.standard_normal((3000, 32)) * np.geomspace(6, 0.05, 32)
    X = (Z @ np.linalg.qr(rng.standard_normal((32, 32)))[0]).astype(np.float32)
    pca = PCA(32).fit(X[:2000])
    H = pca.transform(X).astype(np.float32)
    alloc = AllocatedQuantizer(bit_budget=32).fit(H[:2000])
    uni = PercentileQuantizer(bits=1).fit(H[:2000])
    err_a = np.mean((alloc.inverse_transform(alloc.transform(H[2000:])) - H[2000:]) ** 2)
    err_u = np.mean((uni.inverse_transform(uni.transform(H[2000:])) - H[2000:]) ** 2)
    assert err_a < 0.7 * err_u


def test_grid_search_over_the_budget_and_power():
    X = _data(400)

    def score(est, X, y=None):
        # Negative reconstruction error of the quantizer step.
        q = est[-1]
        H = est[:-1].transform(X)
        return -np.mean((q.inverse_transform(q.transform(H)) - H) ** 2)

    gs = GridSearchCV(
        make_pipeline(PCA(8), AllocatedQuantizer()),
        {"allocatedquantizer__bit_budget": [4, 16], "allocatedquantizer__max_bits": [2, 3]},
        scoring=score,
        cv=2,
    ).fit(X)
    assert gs.best_params_["allocatedquantizer__bit_budget"] == 16


def test_bad_inputs():
    X = _data(100, 4)
    with pytest.raises(ValueError, match="bit_budget=13 exceeds"):
        AllocatedQuantizer(bit_budget=13, max_bits=3).fit(X)
    with pytest.raises(ValueError, match="bit_budget"):
        AllocatedQuantizer(bit_budget=0).fit(X)
    with pytest.raises(ValueError, match="max_bits"):
        AllocatedQuantizer(max_bits=9).fit(X)
    with pytest.raises(ValueError, match="at least 2\\*\\*max_bits"):
        AllocatedQuantizer(bit_budget=4, max_bits=3).fit(X[:7])
    with pytest.raises(NotFittedError):
        AllocatedQuantizer().transform(X)
    q = AllocatedQuantizer(bit_budget=6).fit(X)
    with pytest.raises(ValueError, match="4 features"):
        q.transform(X[:, :3])
    with pytest.raises(ValueError, match="columns"):
        q.inverse_transform(np.zeros((2, 3), dtype=np.uint8))
    with pytest.raises(TypeError, match="integers"):
        q.inverse_transform(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="0..2\\*\\*bits_"):
        q.inverse_transform(np.full((2, 4), 7, dtype=np.uint8))
    with pytest.raises(ValueError, match="variances"):
        allocate_bits([1.0, -1.0], 1)
    with pytest.raises(ValueError, match="allocation_power"):
        allocate_bits([1.0], 1, allocation_power=0)
    with pytest.raises(ValueError, match="normalize"):
        search(X, X, 1, normalize="yes")


def test_clone_and_joblib_roundtrip_in_fresh_process(tmp_path):
    X = _data(200)
    q = AllocatedQuantizer(bit_budget=11, pack=True, random_state=0).fit(X)
    assert clone(q).get_params() == q.get_params()
    path = tmp_path / "q.joblib"
    joblib.dump(q, path)
    np.save(tmp_path / "X.npy", X)
    code = (
        "import joblib, numpy as np, sys;"
        f"q = joblib.load({str(path)!r}); X = np.load({str(tmp_path / 'X.npy')!r});"
        "sys.stdout.write(q.transform(X).tobytes().hex())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert bytes.fromhex(out) == q.transform(X).tobytes()


@pytest.mark.parametrize("spread", [1000.0, -1000.0, 1e6])
def test_extreme_spread_gives_finite_code_values_and_scores(spread):
    # Issue 9 item 5: a large |spread| overflowed std ** spread into NaN code values.
    from skfusion.search import search

    X = _data(400)
    q = AllocatedQuantizer(bit_budget=12, spread=spread).fit(X)
    assert np.isfinite(q.code_values_).all()
    assert q.code_values_.any()
    for queries in (X[:5], q.transform(X[:5])):
        s, _ = search(queries, q.transform(X), 5, quantizer=q)
        assert np.isfinite(s).all()


@pytest.mark.parametrize("d", [1, 3, 8, 64])
@pytest.mark.parametrize("max_bits", [1, 2, 3])
def test_default_budget_is_two_bits_a_feature_at_any_width(d, max_bits):
    X = _data(d=d)
    q = AllocatedQuantizer(max_bits=max_bits).fit(X)
    assert q.n_bits_ == min(2, max_bits) * d
    if max_bits >= 2:  # the bytes of PercentileQuantizer(bits=2) on the same input
        assert q.bytes_per_vector_ == PercentileQuantizer(bits=2).fit(X).bytes_per_vector_
    # max_features caps the coded columns, and so the default budget with them.
    assert AllocatedQuantizer(max_features=1).fit(X).n_bits_ == 2


def test_an_explicit_budget_too_large_for_the_input_is_an_error_not_a_clip():
    with pytest.raises(ValueError, match="bit_budget=100 exceeds"):
        AllocatedQuantizer(bit_budget=100).fit(_data(d=8))


@pytest.mark.parametrize("scale", [1e150, 1e300, 1e-150])
def test_calibration_outside_float32_range_raises_naming_x(scale):
    # 1e150: std_ inf, silently; 1e300: an error about "variances", not X.
    X = np.random.default_rng(0).standard_normal((64, 4)) * scale
    with pytest.raises(ValueError, match=r"X has values of magnitude .*normalize"):
        AllocatedQuantizer(bit_budget=6).fit(X)
