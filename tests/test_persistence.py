"""skfusion.persistence: skops files that load only trusted types, fingerprints, indexes."""

import io
import json
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import skops.io as sio
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from skfusion import ConcatEmbedder, MatryoshkaDecoder, PercentileQuantizer
from skfusion.persistence import dump, fingerprint, load, load_index, save_index


def _pipeline(model_path, corpus, random_state=0):
    lexical = make_pipeline(TfidfVectorizer(), TruncatedSVD(8, random_state=random_state))
    pipe = make_pipeline(
        ConcatEmbedder([model_path, lexical], show_progress_bar=False),
        MatryoshkaDecoder(
            n_components=16, stops=(8, 16), output_dim=8, max_epochs=3,
            random_state=random_state,
        ),
        PercentileQuantizer(bits=2, random_state=random_state),
    )  # fmt: skip
    return pipe.fit(corpus)


@pytest.fixture(scope="module")
def fitted(tiny_model_paths, tiny_corpus):
    return _pipeline(tiny_model_paths[0], tiny_corpus)


def _retype(path, out, old_class, module, name):
    """Copy a skops file, naming every ``old_class`` node ``module.name`` instead."""

    def walk(node):
        if isinstance(node, dict):
            if node.get("__class__") == old_class:
                node["__module__"], node["__class__"] = module, name
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "schema.json":
                schema = json.loads(data)
                walk(schema)
                data = json.dumps(schema).encode()
            dst.writestr(item, data)
    return out


_ROUND_TRIP = """
import sys
import numpy as np
from skfusion.persistence import fingerprint, load
pipe = load(sys.argv[1])
np.save(sys.argv[2], pipe.transform(sys.argv[3:]))
print(fingerprint(pipe))
"""


def test_pipeline_round_trips_bitwise_in_a_fresh_process(tmp_path, fitted, tiny_corpus):
    path = tmp_path / "pipe.skops"
    dump(fitted, path)
    texts = tiny_corpus[:10]
    out = tmp_path / "codes.npy"
    result = subprocess.run(
        [sys.executable, "-c", _ROUND_TRIP, str(path), str(out), *texts],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    expected = fitted.transform(texts)
    got = np.load(out)
    assert got.dtype == expected.dtype and np.array_equal(got, expected)
    # The fingerprint names the fitted model, whatever the process or the reload.
    assert result.stdout.strip() == fingerprint(fitted) == fingerprint(load(path))
    assert fingerprint(pickle.loads(pickle.dumps(fitted))) == fingerprint(fitted)


def test_fingerprint_differs_for_another_random_state(
    fitted, tiny_model_paths, tiny_corpus
):
    other = _pipeline(tiny_model_paths[0], tiny_corpus, random_state=1)
    assert other.transform(["x"]).shape == fitted.transform(["x"]).shape
    assert fingerprint(other) != fingerprint(fitted)


def test_foreign_function_in_a_skops_file_is_refused(tmp_path):
    path = tmp_path / "evil.skops"
    sio.dump(make_pipeline(FunctionTransformer(os.system)), path)
    with pytest.raises(ValueError, match=r"system.*skops.io.get_untrusted_types"):
        load(path)


def test_tampered_class_is_refused_before_anything_is_built(tmp_path, fitted):
    path = tmp_path / "pipe.skops"
    dump(fitted, path)
    # A foreign class: skops would call its __setstate__ / __new__ if trusted.
    evil = _retype(path, tmp_path / "a.skops", "PercentileQuantizer", "pathlib", "Path")
    with pytest.raises(ValueError, match=r"pathlib\.Path"):
        load(evil)
    # A name in a skfusion module that is not a class defined by skfusion.
    imported = _retype(path, tmp_path / "b.skops", "PercentileQuantizer", "skfusion.cli",
                       "Path")  # fmt: skip
    with pytest.raises(ValueError, match=r"skfusion\.cli\.Path"):
        load(imported)
    # skfusion.__main__ runs the command when imported; it is never imported.
    main = _retype(path, tmp_path / "c.skops", "PercentileQuantizer", "skfusion.__main__",
                   "X")  # fmt: skip
    with pytest.raises(ValueError, match=r"skfusion\.__main__\.X"):
        load(main)


def test_dump_refuses_what_load_would_refuse(tmp_path):
    path = tmp_path / "f.skops"
    with pytest.raises(ValueError, match="does not trust: .*system"):
        dump(make_pipeline(FunctionTransformer(os.system)), path)
    assert not path.exists()


def test_dump_and_load_need_a_skops_name(tmp_path, fitted):
    with pytest.raises(ValueError, match=r"\.skops"):
        dump(fitted, tmp_path / "model.joblib")
    with pytest.raises(ValueError, match=r"\.skops"):
        load(tmp_path / "model.joblib")


def test_index_keeps_vectors_ids_and_model_together(tmp_path, fitted, tiny_model_paths,
                                                    tiny_corpus):  # fmt: skip
    path = tmp_path / "index.npz"
    codes = fitted.transform(tiny_corpus[:5])
    save_index(path, codes, ids=[f"d{i}" for i in range(5)], model=fitted)
    vectors, ids = load_index(path, model=fitted)
    quant = fitted[-1]
    assert np.array_equal(quant.to_codes(vectors), codes)
    assert ids == ["d0", "d1", "d2", "d3", "d4"]
    # Plain numpy reads it, without pickle.
    with np.load(path, allow_pickle=False) as npz:
        assert np.array_equal(npz["vectors"], quant.to_packed(codes))
    other = _pipeline(tiny_model_paths[0], tiny_corpus, random_state=1)
    with pytest.raises(ValueError, match="encoded by another model"):
        load_index(path, model=other)


def test_index_with_ids_and_rows_apart_is_refused(tmp_path, fitted):
    path = tmp_path / "index.npz"
    save_index(path, np.zeros((4, 8), np.uint8), model=fitted)
    with np.load(path) as npz:
        arrays = dict(npz)
    arrays["ids_offsets"] = arrays["ids_offsets"][:4]
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="3 ids for 4 rows"):
        load_index(path, model=fitted)


def test_bare_array_is_not_an_index(tmp_path):
    path = tmp_path / "old.npy"
    np.save(path, np.zeros(16, np.float32))
    with pytest.raises(ValueError, match=r"bare array of shape \(16,\)"):
        load_index(path)


def test_in_memory_model_member_is_a_clear_error(tmp_path, tiny_model_paths):
    from sentence_transformers import SentenceTransformer

    member = SentenceTransformer(tiny_model_paths[0], device="cpu")
    embedder = ConcatEmbedder([member], show_progress_bar=False).fit(["a"])
    with pytest.raises(ValueError, match="give members by hub name or path"):
        dump(embedder, tmp_path / "e.skops")
    assert not (tmp_path / "e.skops").exists()


@pytest.mark.parametrize("pack", [False, True])
def test_index_of_codes_as_wide_packed_as_unpacked(tmp_path, pack):
    # 10 bits over 2 codes: 2 bytes packed or not. Stored packed, a pack=False
    # quantizer would read them back as codes; the index keeps the form it reads.
    from skfusion import AllocatedQuantizer
    from skfusion.persistence import index_rows
    from skfusion.search import search

    X = np.random.default_rng(0).normal(size=(300, 2)) * [3.0, 1.0]
    quant = AllocatedQuantizer(bit_budget=10, max_bits=8, pack=pack, random_state=0).fit(X)
    assert quant.bytes_per_vector_ == quant.bits_.size == 2 and quant.n_bits_ == 10
    codes = quant.transform(X)
    path = tmp_path / "index.npz"
    save_index(path, codes, model=quant)
    stored, _ = load_index(path, model=quant)
    assert stored.shape == (300, 2) and stored.dtype == np.uint8
    assert np.array_equal(quant.to_codes(stored), quant.to_codes(codes))
    for queries, stored_queries, metric in [
        (X[:7], X[:7], "asymmetric"),
        (codes[:7], index_rows(quant, codes[:7]), "codes"),
    ]:
        expected = search(queries, codes, k=5, metric=metric, quantizer=quant)
        got = search(stored_queries, stored, k=5, metric=metric, quantizer=quant)
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_array_equal(got[0], expected[0])
