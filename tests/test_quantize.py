"""PercentileQuantizer and the bit-packing helpers."""

import subprocess
import sys

import joblib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.preprocessing import KBinsDiscretizer
from sklearn.utils.estimator_checks import parametrize_with_checks

from skfusion.quantize import PercentileQuantizer, pack_codes, unpack_codes


def _data(n=500, d=6, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)) * np.arange(1, d + 1)).astype(np.float32)


@parametrize_with_checks(
    [PercentileQuantizer(), PercentileQuantizer(bits=3, pack=True, subsample=50)]
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_codes_follow_the_paper_formula_literally():
    X = _data()
    for bits in (1, 2, 3, 4, 8):
        q = PercentileQuantizer(bits=bits).fit(X)
        X64 = X.astype(np.float64)
        expected = np.zeros(X.shape, dtype=np.int64)
        for j in range(X.shape[1]):
            for k in range(1, 2**bits):
                tau = np.percentile(X64[:, j], 100 * k / 2**bits)
                assert q.thresholds_[j, k - 1] == tau
                expected[:, j] += X64[:, j] > tau
        codes = q.transform(X)
        assert codes.dtype == np.uint8
        np.testing.assert_array_equal(codes, expected)


def test_float32_rounding_matches_float64_formula_at_the_edges():
    X = _data(200, 3)
    q = PercentileQuantizer(bits=4).fit(X.astype(np.float64))
    # Values right at, just above and just below every float64 break-point.
    t = q.thresholds_.astype(np.float32)
    probe = np.concatenate(
        [t, np.nextafter(t, np.float32(np.inf)), np.nextafter(t, np.float32(-np.inf))],
        axis=1,
    ).T.astype(np.float32)
    expected = (probe.astype(np.float64)[:, :, None] > q.thresholds_[None]).sum(2)
    np.testing.assert_array_equal(q.transform(probe), expected)
    np.testing.assert_array_equal(q.transform(probe.astype(np.float64)), expected)


def test_bucket_values_and_inverse_transform():
    X = _data(4000, 4)
    q = PercentileQuantizer(bits=3).fit(X)
    codes = q.transform(X)
    rec = q.inverse_transform(codes)
    assert rec.dtype == np.float32 and rec.shape == X.shape
    for j in range(4):
        for b in range(8):
            np.testing.assert_allclose(
                q.bucket_values_[j, b], X[codes[:, j] == b, j].mean(), rtol=1e-5
            )
    # More bits reconstruct better.
    errs = [
        np.abs(
            PercentileQuantizer(bits=b)
            .fit(X)
            .inverse_transform(PercentileQuantizer(bits=b).fit(X).transform(X))
            - X
        ).mean()
        for b in (1, 2, 4)
    ]
    assert errs[0] > errs[1] > errs[2]


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_roundtrip_and_packed_inverse(bits):
    X = _data(300, 7)
    plain = PercentileQuantizer(bits=bits).fit(X)
    packed = PercentileQuantizer(bits=bits, pack=True).fit(X)
    p = packed.transform(X)
    assert p.shape == (300, -(-7 * bits // 8)) and p.dtype == np.uint8
    np.testing.assert_array_equal(unpack_codes(p, bits, 7), plain.transform(X))
    np.testing.assert_array_equal(
        packed.inverse_transform(p), plain.inverse_transform(plain.transform(X))
    )
    assert len(packed.get_feature_names_out()) == p.shape[1]


def test_constant_and_tied_dimensions_give_documented_codes():
    X = np.zeros((40, 3))
    X[:, 1] = np.r_[np.zeros(36), 1.0, 2.0, 3.0, 4.0]  # 90% ties
    X[:, 2] = np.arange(40)
    q = PercentileQuantizer(bits=3).fit(X)
    assert np.isfinite(q.thresholds_).all() and np.isfinite(q.bucket_values_).all()
    np.testing.assert_array_equal(q.thresholds_[0], 0.0)
    codes = q.transform(np.array([[0.0, 0.0, 0.0], [0.5, 4.0, 39.0]]))
    np.testing.assert_array_equal(codes[0, :2], [0, 0])  # equal to the constant: 0
    np.testing.assert_array_equal(codes[1, :2], [7, 7])  # above it: top code
    # Empty buckets of the constant dimension reconstruct to the constant.
    np.testing.assert_array_equal(q.bucket_values_[0], 0.0)
    np.testing.assert_array_equal(np.bincount(q.transform(X)[:, 2]), [5] * 8)


def test_subsample_is_seeded():
    X = _data(3000, 3)
    a = PercentileQuantizer(bits=2, subsample=100, random_state=0).fit(X)
    b = PercentileQuantizer(bits=2, subsample=100, random_state=0).fit(X)
    c = PercentileQuantizer(bits=2, subsample=100, random_state=1).fit(X)
    np.testing.assert_array_equal(a.thresholds_, b.thresholds_)
    assert not np.array_equal(a.thresholds_, c.thresholds_)


def test_same_buckets_as_kbinsdiscretizer_on_continuous_data():
    X = _data(2000, 3)
    ours = PercentileQuantizer(bits=2).fit(X).transform(X)
    kb = KBinsDiscretizer(
        n_bins=4,
        encode="ordinal",
        strategy="quantile",
        quantile_method="linear",
        subsample=None,
    ).fit(X.astype(np.float64))
    # KBins puts values equal to an edge in the upper bin; none are equal here.
    agree = (kb.transform(X.astype(np.float64)) == ours).mean()
    assert agree > 0.998


@pytest.mark.parametrize("bits", [0, 9, 2.5, "2"])
def test_bad_bits(bits):
    with pytest.raises(ValueError, match="bits"):
        PercentileQuantizer(bits=bits).fit(_data())


def test_bad_inputs():
    X = _data()
    with pytest.raises(ValueError, match="n_samples=3"):
        PercentileQuantizer(bits=2).fit(X[:3])
    for bad in (np.nan, np.inf):
        Xb = X.copy()
        Xb[3, 1] = bad
        with pytest.raises(ValueError, match="NaN|infinity"):
            PercentileQuantizer().fit(Xb)
    q = PercentileQuantizer().fit(X)
    with pytest.raises(ValueError, match="features"):
        q.transform(X[:, :4])
    with pytest.raises(NotFittedError):
        PercentileQuantizer().transform(X)
    with pytest.raises(TypeError, match="integers"):
        q.inverse_transform(X)
    with pytest.raises(ValueError, match="0..3"):
        q.inverse_transform(np.full((2, 6), 4, dtype=np.uint8))
    with pytest.raises(ValueError, match="columns"):
        q.inverse_transform(np.zeros((2, 5), dtype=np.uint8))
    with pytest.raises(ValueError, match="0..1"):
        pack_codes(np.array([[2]]), 1)


def test_clone_params_feature_names():
    q = PercentileQuantizer(bits=4, pack=True, random_state=3)
    c = clone(q)
    assert c.get_params() == q.get_params()
    q.fit(_data(100, 5))
    assert list(q.get_feature_names_out()) == [f"percentilequantizer{i}" for i in range(3)]
    q.set_params(pack=False).fit(_data(100, 5))
    assert len(q.get_feature_names_out()) == 5


def test_joblib_roundtrip_in_fresh_process(tmp_path):
    X = _data(300, 5)
    q = PercentileQuantizer(bits=3, pack=True, subsample=100, random_state=0).fit(X)
    joblib.dump((q, X), tmp_path / "q.joblib")
    code = (
        "import joblib, numpy as np, sys; q, X = joblib.load(sys.argv[1]); "
        "np.save(sys.argv[2], q.transform(X)); np.save(sys.argv[3], "
        "q.inverse_transform(q.transform(X)))"
    )
    subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(tmp_path / "q.joblib"),
            str(tmp_path / "c.npy"),
            str(tmp_path / "r.npy"),
        ],
        check=True,
    )
    np.testing.assert_array_equal(np.load(tmp_path / "c.npy"), q.transform(X))
    np.testing.assert_array_equal(
        np.load(tmp_path / "r.npy"), q.inverse_transform(q.transform(X))
    )


_floats = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=40, deadline=None)
@given(
    X=arrays(
        np.float32, st.tuples(st.integers(16, 60), st.integers(1, 4)), elements=_floats
    ),
    bits=st.integers(1, 4),
    data=st.data(),
)
def test_codes_are_monotone_in_the_input(X, bits, data):
    q = PercentileQuantizer(bits=bits).fit(X)
    a = data.draw(arrays(np.float32, (20, X.shape[1]), elements=_floats))
    b = data.draw(arrays(np.float32, (20, X.shape[1]), elements=_floats))
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    assert (q.transform(lo) <= q.transform(hi)).all()


@settings(max_examples=40, deadline=None)
@given(n=st.integers(64, 400), bits=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_each_bucket_holds_its_share_of_the_calibration_mass(n, bits, seed):
    # Continuous data (no ties): each bucket holds n / 2**b rows up to rounding.
    X = np.random.default_rng(seed).standard_normal((n, 2))
    codes = PercentileQuantizer(bits=bits).fit(X).transform(X)
    for j in range(2):
        counts = np.bincount(codes[:, j], minlength=2**bits)
        assert np.abs(counts - n / 2**bits).max() <= 1.0


@settings(max_examples=60, deadline=None)
@given(
    bits=st.integers(1, 8),
    shape=st.tuples(st.integers(0, 6), st.integers(1, 19)),
    data=st.data(),
)
def test_pack_unpack_is_identity(bits, shape, data):
    codes = data.draw(arrays(np.uint8, shape, elements=st.integers(0, 2**bits - 1)))
    packed = pack_codes(codes, bits)
    assert packed.shape == (shape[0], -(-shape[1] * bits // 8))
    np.testing.assert_array_equal(unpack_codes(packed, bits, shape[1]), codes)


@pytest.mark.parametrize(
    "make",
    [
        lambda: PercentileQuantizer(bits=2),
        lambda: PercentileQuantizer(bits=3),
        lambda: __import__("skfusion").AllocatedQuantizer(bit_budget=13),
    ],
)
def test_pack_changed_after_fit_is_honoured_everywhere(make):
    # Issue 9 item 5: main crashed (broadcast error) or kept the fit-time width.
    pd = pytest.importorskip("pandas")
    X = _data()
    q = make().fit(X)
    codes = q.transform(X)
    packed = q.set_params(pack=True).transform(X)
    assert packed.shape == (X.shape[0], q.bytes_per_vector_)
    np.testing.assert_array_equal(q.to_codes(packed), codes)
    assert len(q.get_feature_names_out()) == packed.shape[1]
    df = q.set_output(transform="pandas").transform(X)
    assert isinstance(df, pd.DataFrame) and list(df.columns) == list(
        q.get_feature_names_out()
    )
    np.testing.assert_array_equal(df.to_numpy(), packed)
    q.set_output(transform="default").set_params(pack=False)
    assert len(q.get_feature_names_out()) == X.shape[1]
    with pytest.raises(ValueError, match="'pack' parameter"):
        q.set_params(pack="yes").transform(X)


def test_fit_parameters_changed_after_fit_wait_for_the_next_fit():
    X = _data()
    q = PercentileQuantizer(bits=2).fit(X)
    codes = q.transform(X)
    q.set_params(bits=3, pack=True)  # bits takes effect at the next fit only
    packed = q.transform(X)
    assert (
        packed.shape[1] == len(q.get_feature_names_out()) == pack_codes(codes, 2).shape[1]
    )
    np.testing.assert_array_equal(packed, pack_codes(codes, 2))
    assert q.fit(X).transform(X).shape[1] == -(-X.shape[1] * 3 // 8)


def test_subsample_smaller_than_the_buckets_is_rejected():
    with pytest.raises(ValueError, match="subsample=2.*at least 4"):
        PercentileQuantizer(subsample=2, bits=2).fit(_data())


def _unsampled_row(n, subsample, random_state):
    """A row the seeded calibration draw leaves out (the draw documented in fit)."""
    drawn = np.random.RandomState(random_state).choice(n, size=subsample, replace=False)
    return int(np.setdiff1d(np.arange(n), drawn)[0])


def test_memmap_calibrates_on_the_seeded_sample_without_reading_it_whole(tmp_path):
    # Issue 12: main validated (read) every row before drawing the sample.
    import tracemalloc

    from skfusion import AllocatedQuantizer

    rng = np.random.default_rng(0)
    n, d = 40_000, 256  # 41 MB of float32
    X = np.lib.format.open_memmap(tmp_path / "x.npy", "w+", np.float32, (n, d))
    for s in range(0, n, 10_000):
        X[s : s + 10_000] = rng.standard_normal((10_000, d))
    # A NaN in a row outside the sample: only a quantizer that reads every row sees it.
    X[_unsampled_row(n, 1000, 3), 0] = np.nan
    X.flush()
    X = np.load(tmp_path / "x.npy", mmap_mode="r")
    for make in (
        lambda: PercentileQuantizer(bits=2, subsample=1000, random_state=3),
        lambda: AllocatedQuantizer(bit_budget=300, subsample=1000, random_state=3),
    ):
        tracemalloc.start()
        q = make().fit(X)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < X.nbytes / 5, peak
        ref = make().fit(np.nan_to_num(np.array(X)))  # same rows, read in memory
        np.testing.assert_array_equal(q.thresholds_, ref.thresholds_)
        np.testing.assert_array_equal(q.bucket_values_, ref.bucket_values_)
    # A NaN inside the sample is still refused.
    with pytest.raises(ValueError, match="NaN"):
        PercentileQuantizer(subsample=None).fit(X)


def test_dask_array_calibrates_on_the_seeded_sample():
    da = pytest.importorskip("dask.array")
    X = _data(3000, 6).astype(np.float64)
    Xn = X.copy()
    Xn[_unsampled_row(3000, 700, 1), 2] = np.nan  # never read
    dX = da.from_array(Xn, chunks=(500, 6))
    q = PercentileQuantizer(bits=2, subsample=700, random_state=1).fit(dX)
    ref = PercentileQuantizer(bits=2, subsample=700, random_state=1).fit(X)
    np.testing.assert_array_equal(q.thresholds_, ref.thresholds_)
    assert q.n_features_in_ == 6


@pytest.mark.parametrize("pack", [False, True])
def test_pickles_from_before_the_code_protocol_still_transform(pack):
    import pickle

    from skfusion import RandomProjectionLSH

    X = _data()
    for est in (PercentileQuantizer(bits=3, pack=pack), RandomProjectionLSH(16, pack=pack)):
        est.fit(X)
        expected = est.transform(X)
        # What an older skfusion pickled: the output width, no bits_/code_values_.
        state = dict(est.__getstate__())
        for name in ("bits_", "n_bits_", "code_values_"):
            del state[name]
        state["_n_features_out"] = expected.shape[1]
        old = type(est).__new__(type(est))
        old.__setstate__(pickle.loads(pickle.dumps(state)))
        np.testing.assert_array_equal(old.transform(X), expected)
        assert len(old.get_feature_names_out()) == expected.shape[1]
        np.testing.assert_array_equal(old.code_values_, est.code_values_)


@pytest.mark.parametrize("scale", [1e150, 1e-150])
def test_calibration_outside_float32_range_raises_naming_x(scale):
    # std_ and bucket_values_ are float32: they came out inf (1e150) or all zero
    # (1e-150, so inverse_transform returned zeros), silently.
    X = np.random.default_rng(0).standard_normal((64, 3)) * scale
    with pytest.raises(ValueError, match=r"X has values of magnitude .*normalize"):
        PercentileQuantizer(bits=2).fit(X)
    q = PercentileQuantizer(bits=2).fit(X / scale * 1e30)  # within float32: fine
    assert np.isfinite(q.std_).all() and np.isfinite(q.bucket_values_).all()
