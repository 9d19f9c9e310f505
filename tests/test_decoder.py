"""MatryoshkaDecoder: scikit-learn contract, training behaviour, inference without torch."""

import pickle
import subprocess
import sys
import tracemalloc
import warnings

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.model_selection import GridSearchCV
from sklearn.utils.estimator_checks import parametrize_with_checks

pytest.importorskip("torch")

from skfusion.decoder import MatryoshkaDecoder  # noqa: E402


def _unit_rows(n, d, seed=0, rank=None):
    rng = np.random.default_rng(seed)
    if rank is None:
        X = rng.normal(size=(n, d))
    else:
        # Low-rank signal with decaying scales plus noise: PCA-like structure.
        scales = 1.0 / np.arange(1, rank + 1)
        X = (rng.normal(size=(n, rank)) * scales) @ rng.normal(size=(rank, d))
        X += 0.05 * rng.normal(size=(n, d)) + 0.5
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X.astype(np.float32)


def _small(**kw):
    params = dict(n_components=4, stops=(2, 4), max_epochs=2, batch_size=16, random_state=0)
    params.update(kw)
    return MatryoshkaDecoder(**params)


# stops=None (one stop at n_components) because some checks set n_components=1.
@parametrize_with_checks(
    [_small(stops=None), _small(stops=None, init="random", early_stopping=False)]
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


# Default stops ("auto") for several widths, including ones below the paper's stops.
@parametrize_with_checks(
    [MatryoshkaDecoder(n, max_epochs=2, random_state=0) for n in (1, 5, 48, 768)]
)
def test_sklearn_compatible_with_default_stops(estimator, check):
    check(estimator)


@pytest.mark.parametrize(
    "n_components, stops",
    [
        (1, [1]),
        (32, [32]),
        (48, [32, 48]),
        (300, [32, 64, 128, 200, 256, 300]),
        (768, [32, 64, 128, 200, 256, 300, 384, 512, 768]),
        (1024, [32, 64, 128, 200, 256, 300, 384, 512, 768, 1024]),
    ],
)
def test_auto_stops_fit_every_width(n_components, stops):
    X = _unit_rows(40, 6)
    dec = MatryoshkaDecoder(n_components, max_epochs=1, random_state=0).fit(X)
    assert dec.stops_ == stops
    assert dec.transform(X).shape == (40, n_components)


def test_default_stops_at_768_are_the_papers():
    X = _unit_rows(64, 6)
    params = dict(max_epochs=2, batch_size=16, random_state=0)
    auto = MatryoshkaDecoder(768, **params).fit(X)
    paper = MatryoshkaDecoder(768, (32, 64, 128, 200, 256, 300, 384, 512, 768), **params)
    paper.fit(X)
    np.testing.assert_array_equal(auto.components_, paper.components_)
    np.testing.assert_array_equal(auto.bias_, paper.bias_)


# ----------------------------------------------------------------- behaviour


def test_pca_init_without_training_is_pca():
    X = _unit_rows(300, 12, rank=6)
    dec = MatryoshkaDecoder(
        6, (3, 6), max_epochs=0, target_whiten=0.0, normalize=False
    ).fit(X)
    pca = PCA(6).fit(X)
    ours, ref = dec.transform(X), pca.transform(X)
    # Same components up to sign.
    signs = np.sign(np.sum(ours * ref, axis=0))
    np.testing.assert_allclose(ours * signs, ref, atol=2e-5)
    np.testing.assert_allclose(
        dec.explained_variance_, pca.explained_variance_ * (299 / 300), rtol=1e-3
    )
    assert dec.loss_curve_ == [] and dec.n_iter_ == 0


def test_whiten_and_output_dim_apply_without_refit():
    X = _unit_rows(300, 12, rank=6)
    dec = MatryoshkaDecoder(6, (3, 6), max_epochs=0, normalize=False).fit(X)
    full = dec.transform(X)
    W_before = dec.components_.copy()
    dec.set_params(output_dim=3)
    np.testing.assert_array_equal(dec.transform(X), full[:, :3])
    dec.set_params(output_dim=None, whiten=0.5)
    whitened = dec.transform(X)
    np.testing.assert_allclose(whitened, full / np.sqrt(dec.explained_variance_), rtol=1e-5)
    # Full whitening: unit variance outputs on the training rows.
    np.testing.assert_allclose(whitened.var(axis=0), 1.0, rtol=1e-3)
    np.testing.assert_array_equal(dec.components_, W_before)
    assert list(dec.get_feature_names_out()) == [f"matryoshkadecoder{i}" for i in range(6)]


def test_transform_normalises_and_preserves_dtype():
    X = _unit_rows(100, 10)
    dec = _small().fit(X)
    for dtype in (np.float32, np.float64):
        out = dec.transform(X.astype(dtype))
        assert out.dtype == dtype and out.shape == (100, 4)
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    assert dec.components_.dtype == np.float32 and dec.bias_.dtype == np.float32
    assert dec.components_.shape == (4, 10) and dec.bias_.shape == (4,)


def test_training_lowers_the_loss_from_random_init():
    X = _unit_rows(400, 16, rank=8)
    dec = MatryoshkaDecoder(
        8,
        (2, 4, 8),
        init="random",
        loss="pairwise_mse",
        target_whiten=0.0,
        max_epochs=15,
        batch_size=64,
        learning_rate=1e-2,
        early_stopping=False,
        random_state=0,
    ).fit(X)
    assert len(dec.loss_curve_) == 15
    assert dec.loss_curve_[-1] < 0.5 * dec.loss_curve_[0]
    # The trained prefix keeps the input cosines better than the untrained one.
    untrained = MatryoshkaDecoder(
        8, (2, 4, 8), init="random", max_epochs=0, random_state=0
    ).fit(X)
    target = X @ X.T

    def err(d):
        H = d.transform(X)
        return np.mean((H @ H.T - target) ** 2)

    assert err(dec) < 0.5 * err(untrained)


def _top_k_overlap(A, B, k=5):
    """Mean overlap of each row's k nearest neighbours (cosine) in A and in B."""

    def knn(M):
        M = M / np.linalg.norm(M, axis=1, keepdims=True)
        S = M @ M.T
        np.fill_diagonal(S, -np.inf)
        return np.argsort(-S, axis=1)[:, :k]

    na, nb = knn(A), knn(B)
    return np.mean([len(set(a) & set(b)) / k for a, b in zip(na, nb, strict=True)])


def test_listwise_loss_learns_the_neighbour_ranking():
    X = _unit_rows(400, 16, rank=8)
    params = dict(
        n_components=8,
        stops=(2, 4, 8),
        init="random",
        loss="listwise_kl",
        temperature=0.05,
        target_whiten=0.0,
        batch_size=64,
        random_state=0,
    )
    dec = MatryoshkaDecoder(
        **params, max_epochs=15, learning_rate=1e-2, early_stopping=False
    ).fit(X)
    untrained = MatryoshkaDecoder(**params, max_epochs=0).fit(X)
    assert dec.loss_curve_[-1] < 0.7 * dec.loss_curve_[0]
    overlap = {}
    for k in (2, 8):
        dec.set_params(output_dim=k)
        untrained.set_params(output_dim=k)
        overlap[k] = (
            _top_k_overlap(X, dec.transform(X)),
            _top_k_overlap(X, untrained.transform(X)),
        )
    assert overlap[2][0] > overlap[2][1]
    assert overlap[8][0] > overlap[8][1] + 0.2


def test_early_stopping_records_curves_and_keeps_best():
    X = _unit_rows(300, 12, rank=6)
    dec = MatryoshkaDecoder(
        6,
        (3, 6),
        max_epochs=40,
        batch_size=32,
        learning_rate=3e-2,
        n_iter_no_change=2,
        tol=1e-3,
        random_state=0,
    ).fit(X)
    assert dec.n_iter_ < 40
    assert len(dec.loss_curve_) == len(dec.validation_loss_curve_) == dec.n_iter_
    assert dec.best_validation_loss_ == min(dec.validation_loss_curve_)
    no_es = _small(early_stopping=False).fit(X)
    assert no_es.validation_loss_curve_ is None and no_es.best_validation_loss_ is None


@pytest.mark.parametrize("init", ["pca", "random"])
def test_deterministic_for_a_random_state(init):
    X = _unit_rows(200, 10)
    a = _small(init=init, max_epochs=3).fit(X)
    b = _small(init=init, max_epochs=3).fit(X)
    np.testing.assert_array_equal(a.components_, b.components_)
    np.testing.assert_array_equal(a.bias_, b.bias_)
    c = _small(init=init, max_epochs=3, random_state=1).fit(X)
    assert not np.array_equal(a.components_, c.components_)


def test_device_none_is_resolved_but_not_written_back():
    X = _unit_rows(60, 8)
    dec = _small(device=None).fit(X)
    assert dec.get_params()["device"] is None
    cpu = _small(device="cpu").fit(X)
    np.testing.assert_allclose(dec.transform(X), cpu.transform(X), atol=1e-5)


def test_verbose_prints_each_epoch(capsys):
    X = _unit_rows(60, 8)
    _small(verbose=True, max_epochs=2, early_stopping=False).fit(X)
    out = capsys.readouterr().out
    assert "Epoch 1/2: loss=" in out and "Epoch 2/2: loss=" in out


def test_memmap_is_streamed_not_copied(tmp_path):
    X = _unit_rows(20000, 64)
    path = tmp_path / "z.npy"
    np.save(path, X)
    mm = np.load(path, mmap_mode="r")
    params = dict(
        n_components=8, stops=(4, 8), max_epochs=1, batch_size=512, random_state=0
    )
    tracemalloc.start()
    dec = MatryoshkaDecoder(**params).fit(mm)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # numpy allocations stay well below the array's 5 MB (batches and blocks only).
    assert peak < X.nbytes / 2
    ref = MatryoshkaDecoder(**params).fit(X)
    np.testing.assert_allclose(dec.components_, ref.components_, atol=1e-6)


def test_partial_fit_streams_chunks():
    X = _unit_rows(600, 12, rank=6)
    dec = MatryoshkaDecoder(6, (3, 6), batch_size=64, learning_rate=1e-3, random_state=0)
    for chunk in np.array_split(X, 3):
        dec.partial_fit(chunk)
    assert dec.n_samples_seen_ == 600 and len(dec.loss_curve_) == 3
    assert dec.n_iter_ == 3 * 4  # 200 rows per chunk, batches of 64 (last one merged)
    # explained_variance_ is the exact variance of the outputs over every chunk.
    H = X @ dec.components_.T.astype(np.float64) + dec.bias_
    np.testing.assert_allclose(dec.explained_variance_, H.var(axis=0), rtol=1e-4)
    # The optimizer state survives pickling, so training continues after a reload.
    again = pickle.loads(pickle.dumps(dec)).partial_fit(X[:100])
    assert again.n_samples_seen_ == 700


def test_transform_needs_no_torch(tmp_path):
    X = _unit_rows(50, 8)
    dec = _small().fit(X)
    path = tmp_path / "dec.pkl"
    path.write_bytes(pickle.dumps(dec))
    np.save(tmp_path / "x.npy", X)
    expected = dec.transform(X)
    np.save(tmp_path / "expected.npy", expected)
    code = f"""
import sys, pickle, numpy as np

class NoTorch:  # any import of torch now fails
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")

sys.meta_path.insert(0, NoTorch())
dec = pickle.loads(open({str(path)!r}, "rb").read())
out = dec.transform(np.load({str(tmp_path / "x.npy")!r}))
np.testing.assert_array_equal(out, np.load({str(tmp_path / "expected.npy")!r}))
assert "torch" not in sys.modules
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_grid_search_over_transform_time_parameters():
    X = _unit_rows(120, 10, rank=5)

    def cosine_fidelity(est, X, y=None):
        H = est.transform(X)
        return -np.mean((H @ H.T - X @ X.T) ** 2)

    grid = GridSearchCV(
        _small(max_epochs=1),
        {"whiten": [0.0, 0.25], "output_dim": [2, 4]},
        scoring=cosine_fidelity,
        cv=2,
    ).fit(X)
    assert grid.best_params_["output_dim"] == 4


def test_neighbor_weighting_and_target_whitening_train():
    X = _unit_rows(200, 10, rank=5)
    a = _small(loss="pairwise_mse", neighbor_weight=1.0, max_epochs=2).fit(X)
    b = _small(target_whiten=0.25, max_epochs=2).fit(X)
    assert np.all(np.isfinite(a.components_)) and np.all(np.isfinite(b.components_))
    assert not np.allclose(a.components_, b.components_)


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "params, match",
    [
        ({"stops": (2, 2)}, "strictly increasing"),
        ({"stops": (3, 2)}, "strictly increasing"),
        ({"stops": (2, 5)}, "stops must not exceed n_components"),
        ({"stops": ()}, "non-empty"),
        ({"stops": (1.5, 4)}, "sequence of int"),
        ({"stops": "paper"}, "'stops' parameter of MatryoshkaDecoder must be"),
        ({"output_dim": 5}, "output_dim=5 exceeds n_components=4"),
    ],
)
def test_bad_parameters(params, match):
    with pytest.raises(ValueError, match=match):
        _small(**params).fit(_unit_rows(40, 6))


def test_neighbor_weight_needs_the_mse_loss():
    with pytest.raises(ValueError, match="neighbor_weight=1.0 only applies"):
        _small(loss="listwise_kl", neighbor_weight=1.0).fit(_unit_rows(40, 6))


def test_output_dim_too_large_at_transform():
    X = _unit_rows(40, 6)
    dec = _small().fit(X).set_params(output_dim=9)
    with pytest.raises(ValueError, match="output_dim=9 exceeds n_components=4"):
        dec.transform(X)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"output_dim": -5}, r"output_dim must be None or an int >= 1, got -5"),
        ({"output_dim": 0}, r"output_dim must be None or an int >= 1, got 0"),
        ({"output_dim": 2.5}, r"output_dim must be None or an int >= 1, got 2.5"),
        ({"output_dim": 9}, "output_dim=9 exceeds n_components=4"),
        ({"whiten": -0.5}, r"whiten must be a float in \[0, 1\], got -0.5"),
        ({"whiten": 2}, r"whiten must be a float in \[0, 1\], got 2"),
        ({"normalize": "yes"}, "normalize must be a bool, got 'yes'"),
    ],
)
def test_transform_time_parameters_are_validated_after_fit(params, match):
    X = _unit_rows(40, 6)
    dec = _small().fit(X).set_params(**params)
    with pytest.raises(ValueError, match=match):
        dec.transform(X)
    with pytest.raises(ValueError, match=match):
        dec.get_feature_names_out()


def test_n_components_changed_after_fit_keeps_the_fitted_width():
    X = _unit_rows(40, 6)
    dec = _small().fit(X)
    expected = dec.transform(X)
    dec.set_params(n_components=10)
    np.testing.assert_array_equal(dec.transform(X), expected)
    assert len(dec.get_feature_names_out()) == 4
    with pytest.raises(ValueError, match="output_dim=6 exceeds n_components=4"):
        dec.set_params(output_dim=6).transform(X)


def test_one_sample():
    with pytest.raises(ValueError, match="1 sample"):
        _small().fit(_unit_rows(1, 6))


def test_too_few_rows_for_validation():
    with pytest.raises(ValueError, match="validation_fraction"):
        _small().fit(_unit_rows(3, 6))
    _small(early_stopping=False).fit(_unit_rows(3, 6))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_input(bad):
    X = _unit_rows(40, 6)
    X[3, 2] = bad
    with pytest.raises(ValueError, match="NaN|infinity"):
        _small().fit(X)


@pytest.mark.parametrize("scale", [1e30, 1e12, 1e-12, 1e-30])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fit_outside_float32_safe_scale_raises_naming_x_and_the_fix(scale, dtype):
    # 1e30: float32 covariances overflow (LinAlgError); 1e-30: they underflow to
    # zero and the decoder came out silently wrong.
    X = (_unit_rows(40, 6).astype(np.float64) * scale).astype(dtype)
    fix = r"X has values of magnitude up to .*L2-normalise the rows of X.*normalize"
    with pytest.raises(ValueError, match=fix):
        _small().fit(X)
    with pytest.raises(ValueError, match=fix):
        _small().partial_fit(X)
    dec = _small(max_epochs=0).fit(_unit_rows(40, 6))
    if scale > 1:  # a later chunk: checked before it reaches the statistics
        with pytest.raises(ValueError, match=fix):
            dec.partial_fit(X)


def test_fit_is_scale_equivariant_within_the_supported_range():
    # The variance floor of the whitening was absolute (1e-12), so small inputs
    # lost their whitening: PCA init must not depend on the scale.
    X = _unit_rows(300, 12, rank=6).astype(np.float64)
    params = dict(n_components=6, stops=(3, 6), max_epochs=0, random_state=0)
    ref = MatryoshkaDecoder(**params).fit(X).transform(X)
    for scale in (1e-7, 1e7):
        got = MatryoshkaDecoder(**params).fit(X * scale).transform(X * scale)
        np.testing.assert_allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize("scale", [1e20, 1e30, 1e36, 1e-30])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transform_normalises_rows_of_any_scale(scale, dtype):
    X = _unit_rows(50, 6)
    dec = _small().fit(X)
    X_big = (X.astype(np.float64) * scale).astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # was: overflow warnings and zero or NaN rows
        out = dec.transform(X_big)
    W, b = dec.components_.astype(np.float64), dec.bias_.astype(np.float64)
    expected = X_big.astype(np.float64) / scale @ W.T + b / scale
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_transform_overflow_raises_naming_x():
    dec = _small().fit(_unit_rows(50, 6))
    # Every entry near float32's largest value, signed so the first output adds up.
    X = np.tile(np.sign(dec.components_[0]), (5, 1)).astype(np.float32) * 3e38
    with pytest.raises(ValueError, match=r"X row 0 .*overflows float32.*normalize"):
        dec.transform(X)
    assert np.isfinite(dec.transform(X.astype(np.float64))).all()


def test_width_mismatch_and_not_fitted():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        _small().transform(_unit_rows(5, 6))
    dec = _small().fit(_unit_rows(40, 6))
    with pytest.raises(ValueError, match="7 features"):
        dec.transform(_unit_rows(5, 7))
    with pytest.raises(ValueError, match="7 features"):
        dec.partial_fit(_unit_rows(5, 7))


@pytest.mark.parametrize(("show", "shown"), [(True, True), (False, False), (None, False)])
def test_fit_shows_progress_over_epochs(show, shown, capsys):
    X = np.random.default_rng(0).standard_normal((200, 12)).astype(np.float32)
    MatryoshkaDecoder(4, max_epochs=2, random_state=0, show_progress_bar=show).fit(X)
    out, err = capsys.readouterr()
    assert out == ""
    # None: a fit this short (well under two seconds) stays silent.
    assert ("MatryoshkaDecoder" in err) is shown, err
