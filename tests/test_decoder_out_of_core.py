"""MatryoshkaDecoder fits from an np.memmap or a dask array without loading it whole."""

import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
da = pytest.importorskip("dask.array")

from skfusion.decoder import MatryoshkaDecoder  # noqa: E402

PARAMS = dict(n_components=8, stops=(4, 8), max_epochs=2, batch_size=256, random_state=0)
FITTED = (
    "components_",
    "bias_",
    "mean_",
    "explained_variance_",
    "loss_curve_",
    "validation_loss_curve_",
    "n_samples_seen_",
)


def _unit_rows(n, d, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) + 0.3
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X.astype(np.float32)


def _memmap(tmp_path, X, name="x.npy"):
    np.save(tmp_path / name, X)
    return np.load(tmp_path / name, mmap_mode="r")


def _assert_same_fit(a, b):
    for attr in FITTED:
        np.testing.assert_array_equal(getattr(a, attr), getattr(b, attr), err_msg=attr)


@pytest.mark.parametrize("source", ["memmap", "dask"])
def test_out_of_core_fit_equals_the_in_memory_fit(tmp_path, source):
    X = _unit_rows(10000, 16)
    big = _memmap(tmp_path, X) if source == "memmap" else da.from_array(X, chunks=3000)
    ref = MatryoshkaDecoder(**PARAMS).fit(X)
    _assert_same_fit(MatryoshkaDecoder(**PARAMS).fit(big), ref)


def test_dask_partial_fit_equals_the_in_memory_partial_fit():
    X = _unit_rows(9000, 16)
    dx = da.from_array(X, chunks=2000)
    a, b = MatryoshkaDecoder(**PARAMS), MatryoshkaDecoder(**PARAMS)
    for start in range(0, 9000, 3000):
        a.partial_fit(dx[start : start + 3000])
        b.partial_fit(X[start : start + 3000])
    for attr in ("components_", "bias_", "explained_variance_", "n_samples_seen_"):
        np.testing.assert_array_equal(getattr(a, attr), getattr(b, attr))


def test_dask_array_is_not_materialised():
    X = _unit_rows(100_000, 32)  # 12.8 MB
    dx = da.from_array(X, chunks=10_000)
    params = dict(PARAMS, max_epochs=1)
    MatryoshkaDecoder(**params).fit(dx[:2000])  # dask's first-use imports and caches
    tracemalloc.start()
    MatryoshkaDecoder(**params).fit(dx)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # numpy allocations: row blocks and groups of batches (an eighth of the rows, plus
    # dask's intermediate pieces), never the whole array: materialising it would take
    # X.nbytes at least (dask's own chunks are views of X here).
    assert peak < 0.6 * X.nbytes


@pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak RSS"
)
def test_memmap_fit_keeps_resident_memory_bounded(tmp_path):
    X = _unit_rows(80_000, 256)  # 80 MB on disk
    path = tmp_path / "big.npy"
    np.save(path, X)
    del X
    code = textwrap.dedent(
        f"""
        import numpy as np
        from skfusion.decoder import MatryoshkaDecoder

        def peak_mb():
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024

        small = np.random.default_rng(0).normal(size=(2000, 256)).astype(np.float32)
        params = dict(n_components=8, stops=(4, 8), max_epochs=1, batch_size=512,
                      early_stopping=False, target_whiten=0.0, random_state=0)
        MatryoshkaDecoder(**params).fit(small)  # torch loaded, allocators warm
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS to the current RSS
        before = peak_mb()
        MatryoshkaDecoder(**params).fit(np.load({str(path)!r}, mmap_mode="r"))
        print(peak_mb() - before)
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    growth_mb = float(res.stdout.strip().splitlines()[-1])
    # Reading through the mapping, the peak grows by the whole 80 MB file.
    assert growth_mb < 40, growth_mb


@pytest.mark.parametrize("source", ["memmap", "dask"])
def test_non_finite_rows_are_found_block_by_block(tmp_path, source):
    X = _unit_rows(20000, 8)
    X[12345, 3] = np.nan
    big = _memmap(tmp_path, X) if source == "memmap" else da.from_array(X, chunks=4000)
    with pytest.raises(ValueError, match="NaN or infinity in rows 8192 to 16383"):
        MatryoshkaDecoder(**PARAMS).fit(big)


def test_partial_fit_with_a_bad_chunk_leaves_the_statistics_unchanged(tmp_path):
    X = _unit_rows(3000, 8)
    dec = MatryoshkaDecoder(**PARAMS).partial_fit(X[:1000])
    before = dec.explained_variance_.copy()
    bad = X[1000:].copy()
    bad[-1, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinity in rows"):
        dec.partial_fit(_memmap(tmp_path, bad))
    assert dec.n_samples_seen_ == 1000
    dec.partial_fit(X[1000:2000])
    assert dec.n_samples_seen_ == 2000
    assert not np.array_equal(dec.explained_variance_, before)


def test_bad_out_of_core_input(tmp_path):
    X = _unit_rows(100, 8)
    with pytest.raises(ValueError, match="1 sample"):
        MatryoshkaDecoder(**PARAMS).fit(_memmap(tmp_path, X[:1], "one.npy"))
    with pytest.raises(ValueError, match="2D"):
        MatryoshkaDecoder(**PARAMS).fit(_memmap(tmp_path, X[0], "flat.npy"))
    with pytest.raises(ValueError, match="Complex data"):
        MatryoshkaDecoder(**PARAMS).fit(_memmap(tmp_path, X.astype(complex), "c.npy"))
    dec = MatryoshkaDecoder(**PARAMS).fit(X)
    with pytest.raises(ValueError, match="9 features"):
        dec.partial_fit(da.from_array(_unit_rows(100, 9), chunks=50))
    unknown = da.from_array(X, chunks=50)
    unknown = unknown[unknown[:, 0] > -2]  # unknown chunk sizes
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        MatryoshkaDecoder(**PARAMS).fit(unknown)


def test_integer_memmap_matches_the_in_memory_fit(tmp_path):
    X = np.random.default_rng(0).integers(-50, 50, size=(2000, 8)).astype(np.int16)
    a = MatryoshkaDecoder(**PARAMS).fit(_memmap(tmp_path, X))
    b = MatryoshkaDecoder(**PARAMS).fit(X)
    _assert_same_fit(a, b)
