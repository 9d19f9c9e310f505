"""RandomProjectionLSH: sign bits of a seeded Gaussian projection."""

import subprocess
import sys

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from skfusion.lsh import RandomProjectionLSH


def _data(n=200, d=24, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


@parametrize_with_checks(
    [
        RandomProjectionLSH(n_bits=64, random_state=0),
        RandomProjectionLSH(n_bits=13, pack=False, threshold="median", random_state=0),
    ]
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_bits_are_signs_of_the_projection_packed_msb_first():
    Z = _data()
    lsh = RandomProjectionLSH(n_bits=128, random_state=0).fit(Z)
    assert lsh.projection_.shape == (24, 128) and lsh.projection_.dtype == np.float32
    expected = Z @ lsh.projection_ > 0
    out = lsh.transform(Z)
    assert out.shape == (200, 16) and out.dtype == np.uint8
    np.testing.assert_array_equal(np.unpackbits(out, axis=1).astype(bool), expected)
    unpacked = lsh.set_params(pack=False).transform(Z)
    assert unpacked.dtype == np.bool_
    np.testing.assert_array_equal(unpacked, expected)


def test_seeded_projection():
    Z = _data()
    a = RandomProjectionLSH(64, random_state=7).fit(Z).transform(Z)
    b = RandomProjectionLSH(64, random_state=7).fit(Z).transform(Z)
    c = RandomProjectionLSH(64, random_state=8).fit(Z).transform(Z)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_blocked_transform_matches_one_shot(monkeypatch):
    Z = _data(500)
    lsh = RandomProjectionLSH(64, random_state=0).fit(Z)
    full = lsh.transform(Z)
    sizes = []
    encode = lsh._encode
    monkeypatch.setattr(lsh, "_block_rows", lambda n_features: 7)
    monkeypatch.setattr(lsh, "_encode", lambda X: sizes.append(len(X)) or encode(X))
    np.testing.assert_array_equal(lsh.transform(Z), full)
    assert max(sizes) == 7 and sum(sizes) == 500


def test_median_threshold_balances_uncentred_data():
    Z = _data(1000) + 3.0  # far from the origin: zero-threshold bits are lopsided
    zero = RandomProjectionLSH(256, pack=False, random_state=0).fit(Z).transform(Z)
    med = RandomProjectionLSH(256, pack=False, random_state=0, threshold="median")
    bits = med.fit(Z).transform(Z)
    assert np.abs(bits.mean(axis=0) - 0.5).max() <= 0.001
    assert np.abs(zero.mean(axis=0) - 0.5).mean() > 0.2


def test_hamming_fraction_estimates_the_angle():
    rng = np.random.default_rng(1)
    a = rng.standard_normal(32)
    b = a + 0.8 * rng.standard_normal(32)
    angle = np.arccos(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    lsh = RandomProjectionLSH(8192, pack=False, random_state=0).fit(np.stack([a, b]))
    bits = lsh.transform(np.stack([a, b]))
    frac = (bits[0] != bits[1]).mean()
    # Binomial(8192, p) std <= 0.0056; 5 sigma.
    assert abs(frac - angle / np.pi) < 0.028


def test_bad_inputs():
    Z = _data()
    for n_bits in (0, -8):
        with pytest.raises(ValueError, match="n_bits"):
            RandomProjectionLSH(n_bits).fit(Z)
    with pytest.raises(ValueError, match="threshold"):
        RandomProjectionLSH(8, threshold="mean").fit(Z)
    Zb = Z.copy()
    Zb[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        RandomProjectionLSH(8).fit(Zb)
    lsh = RandomProjectionLSH(8).fit(Z)
    with pytest.raises(ValueError, match="features"):
        lsh.transform(Z[:, :5])
    with pytest.raises(ValueError, match="infinity"):
        lsh.transform(np.full((1, 24), np.inf))
    with pytest.raises(NotFittedError):
        RandomProjectionLSH(8).transform(Z)


def test_clone_params_feature_names():
    lsh = RandomProjectionLSH(32, random_state=0, threshold="median")
    assert clone(lsh).get_params() == lsh.get_params()
    lsh.fit(_data())
    assert list(lsh.get_feature_names_out()) == [
        f"randomprojectionlsh{i}" for i in range(4)
    ]
    assert len(lsh.set_params(pack=False).fit(_data()).get_feature_names_out()) == 32


def test_float64_input_hashes_like_float32_away_from_zero():
    Z = _data(300)
    lsh = RandomProjectionLSH(64, random_state=0, pack=False).fit(Z)
    proj = Z.astype(np.float64) @ lsh.projection_.astype(np.float64)
    safe = np.abs(proj) > 1e-3
    np.testing.assert_array_equal(
        lsh.transform(Z.astype(np.float64))[safe], lsh.transform(Z)[safe]
    )


def test_joblib_roundtrip_in_fresh_process(tmp_path):
    Z = _data()
    lsh = RandomProjectionLSH(64, random_state=0, threshold="median").fit(Z)
    joblib.dump((lsh, Z), tmp_path / "l.joblib")
    code = (
        "import joblib, numpy as np, sys; m, Z = joblib.load(sys.argv[1]); "
        "np.save(sys.argv[2], m.transform(Z))"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "l.joblib"), str(tmp_path / "b.npy")],
        check=True,
    )
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), lsh.transform(Z))


@pytest.mark.parametrize("scale", [1e150, 1e-150])
def test_median_thresholds_outside_float32_range_raise(scale):
    # The float32 projection of 1e150-scale rows was inf, every median NaN and every
    # bit 0; 1e-150-scale medians were stored as 0.
    X = _data().astype(np.float64) * scale
    lsh = RandomProjectionLSH(n_bits=16, threshold="median", random_state=0)
    with pytest.raises(ValueError, match=r"X has values of magnitude .*normalize"):
        lsh.fit(X)
    # Signs are exact at any float64 scale.
    ref = RandomProjectionLSH(n_bits=16, random_state=0).fit(X / scale)
    zero = RandomProjectionLSH(n_bits=16, random_state=0).fit(X)
    np.testing.assert_array_equal(zero.transform(X), ref.transform(X / scale))


def test_median_thresholds_are_computed_in_the_input_dtype():
    X = _data().astype(np.float64) + 0.25
    lsh = RandomProjectionLSH(n_bits=16, threshold="median", random_state=0).fit(X)
    proj = X @ lsh.projection_.astype(np.float64)
    np.testing.assert_array_equal(
        lsh.thresholds_, np.median(proj, axis=0).astype(np.float32)
    )


def test_projection_overflow_raises_instead_of_guessing_bits():
    lsh = RandomProjectionLSH(n_bits=16, random_state=0).fit(_data())
    # Every entry near float32's largest value, signed to add up on the first bit.
    X = np.tile(np.sign(lsh.projection_[:, 0]), (3, 1)).astype(np.float32) * 3e38
    with pytest.raises(ValueError, match=r"X row 0 .*overflows float32.*float64"):
        lsh.transform(X)
    assert lsh.transform(X.astype(np.float64)).shape == (3, 2)
