"""ONNX export: onnxruntime output equals transform (head), and member embeddings."""

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline

from skfusion import (
    AllocatedQuantizer,
    ConcatEmbedder,
    MatryoshkaDecoder,
    PercentileQuantizer,
    RandomProjectionLSH,
)
from skfusion.datasets import load_sample_passages
from skfusion.evaluation import encode
from skfusion.onnx import ExportedPipeline, export_pipeline, to_onnx
from skfusion.onnx.members import (
    UnsupportedMemberError,
    embed,
    export_member,
    export_members,
)


def _run(model, X, dtype="float32"):
    sess = ort.InferenceSession(to_onnx(model, dtype=dtype).SerializeToString())
    return sess.run(None, {"X": np.asarray(X, dtype=dtype)})[0]


def _assert_codes_equal(model, X, dtype="float32"):
    X = np.asarray(X, dtype=dtype)
    got, expected = _run(model, X, dtype), model.transform(X)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def _declared_width(model):
    """The output width the graph declares (onnxruntime only warns when it is wrong)."""
    return to_onnx(model).graph.output[0].type.tensor_type.shape.dim[1].dim_value


def _data(n=300, d=24, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)) * np.linspace(3, 0.2, d)).astype(np.float32)


@pytest.fixture(scope="module")
def decoder():
    return MatryoshkaDecoder(
        n_components=12, stops=(4, 12), max_epochs=2, random_state=0
    ).fit(_data())


@pytest.fixture(scope="module")
def sample_embeddings(tiny_model_paths):
    """Embeddings of 300 passages of the bundled sample by two tiny local models."""
    passages = load_sample_passages(limit=300)
    return ConcatEmbedder(tiny_model_paths, batch_size=64).fit_transform(passages)


@pytest.mark.parametrize("output_dim", [None, 4, 7])
@pytest.mark.parametrize("whiten", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_decoder_matches_transform_in_every_setting(
    decoder, output_dim, whiten, normalize, dtype
):
    dec = decoder.set_params(output_dim=output_dim, whiten=whiten, normalize=normalize)
    X = _data(seed=1).astype(dtype)
    got = _run(dec, X, dtype)
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_allclose(got, dec.transform(X), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("pack", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_percentile_codes_are_bitwise_equal(bits, pack, dtype):
    X = _data(d=13)  # 13 * bits is rarely a whole number of bytes: padding is tested
    q = PercentileQuantizer(bits=bits, pack=pack).fit(X)
    _assert_codes_equal(q, _data(seed=2, d=13), dtype)


@pytest.mark.parametrize("budget,max_bits", [(1, 1), (37, 3), (50, 4), (96, 8)])
@pytest.mark.parametrize("pack", [False, True])
@pytest.mark.parametrize("buckets", ["equal", "gaussian"])
def test_allocated_codes_are_bitwise_equal(budget, max_bits, pack, buckets):
    q = AllocatedQuantizer(
        bit_budget=budget, max_bits=max_bits, pack=pack, buckets=buckets, max_features=20
    ).fit(_data())
    _assert_codes_equal(q, _data(seed=3))


@pytest.mark.parametrize("n_bits,pack", [(64, True), (8, True), (13, False), (64, False)])
@pytest.mark.parametrize("threshold", ["zero", "median"])
def test_lsh_bits_are_bitwise_equal(n_bits, pack, threshold):
    lsh = RandomProjectionLSH(n_bits, pack=pack, threshold=threshold, random_state=0)
    _assert_codes_equal(lsh.fit(_data()), _data(seed=4))


@pytest.mark.parametrize("pack", [False, True])
@pytest.mark.parametrize(
    "make,changed",
    [
        (lambda: PercentileQuantizer(bits=2), {"bits": 3}),
        (lambda: PercentileQuantizer(bits=3), {"bits": 1}),
        (lambda: AllocatedQuantizer(bit_budget=37, max_bits=3), {"bit_budget": 8}),
        (lambda: RandomProjectionLSH(16, random_state=0), {"n_bits": 12}),
        (lambda: RandomProjectionLSH(13, random_state=0), {"n_bits": 64}),
    ],
)
def test_parameters_changed_after_fit_export_the_fitted_codes(make, changed, pack):
    # transform follows the fitted bits_ / n_bits_; the export must too, whatever the
    # constructor parameters say now (they take effect at the next fit).
    est = make().set_params(pack=pack).fit(_data())
    _assert_codes_equal(est.set_params(**changed), _data(seed=5))
    assert _declared_width(est) == est.transform(_data()[:1]).shape[1]


def test_decoder_n_components_changed_after_fit_exports_the_fitted_width(decoder):
    dec = decoder.set_params(n_components=8, output_dim=None)
    try:
        got = _run(dec, _data(seed=6))
        assert got.shape == dec.transform(_data(seed=6)).shape == (300, 12)
        assert _declared_width(dec) == 12
        np.testing.assert_allclose(got, dec.transform(_data(seed=6)), atol=1e-5)
    finally:
        decoder.set_params(n_components=12)


def test_the_sample_through_decoder_and_each_quantizer(sample_embeddings):
    X = sample_embeddings
    dec = MatryoshkaDecoder(n_components=32, stops=(16, 32), max_epochs=2, random_state=0)
    H = dec.fit_transform(X)
    np.testing.assert_allclose(_run(dec, X), H, rtol=1e-5, atol=1e-5)
    for q in (
        PercentileQuantizer(bits=2, pack=True),
        AllocatedQuantizer(bit_budget=48, pack=True),
        RandomProjectionLSH(64, random_state=0),
    ):
        _assert_codes_equal(q.fit(H), H)
    # The whole head in one graph: the decoder's floats differ in the last bits
    # between runtimes, so a value on a break-point may flip its code.
    pipe = make_pipeline(dec, PercentileQuantizer(bits=2)).fit(X)
    assert (_run(pipe, X) == pipe.transform(X)).mean() >= 0.995


@settings(max_examples=25, deadline=None)
@given(
    X=arrays(
        np.float32,
        st.tuples(st.integers(1, 20), st.just(24)),
        elements=st.floats(-1e3, 1e3, width=32, allow_subnormal=False),
    ),
    bits=st.integers(1, 8),
)
def test_codes_equal_on_generated_inputs(decoder, X, bits):
    fitted = _data()
    _assert_codes_equal(PercentileQuantizer(bits=bits, pack=True).fit(fitted), X)
    _assert_codes_equal(AllocatedQuantizer(bit_budget=30).fit(fitted), X)
    # a projection exactly on a threshold could round either way between runtimes;
    # generated rows (no subnormals) land there with probability ~0
    _assert_codes_equal(RandomProjectionLSH(64, random_state=0).fit(fitted), X)
    dec = decoder.set_params(output_dim=None, whiten=0.25, normalize=True)
    np.testing.assert_allclose(_run(dec, X), dec.transform(X), rtol=1e-5, atol=1e-5)


def test_pipeline_with_an_embedder_exports_its_head(tiny_model_paths, tiny_corpus):
    pipe = make_pipeline(
        ConcatEmbedder(tiny_model_paths),
        PCA(8),
        PercentileQuantizer(bits=3),
    ).fit(tiny_corpus)
    Z = pipe[0].transform(tiny_corpus)
    got = _run(pipe, Z)
    assert got.shape == (len(Z), 8) and got.dtype == np.uint8
    # skl2onnx's PCA rounds differently from numpy: a break-point value may flip.
    assert (got == pipe[1:].transform(Z)).mean() >= 0.99


def test_onnx_model_loads_with_the_skl2onnx_entry_point():
    from skl2onnx import to_onnx as skl_to_onnx

    q = PercentileQuantizer(bits=2).fit(_data())
    proto = skl_to_onnx(q, _data()[:1], target_opset={"": 18})
    sess = ort.InferenceSession(proto.SerializeToString())
    np.testing.assert_array_equal(sess.run(None, {"X": _data()})[0], q.transform(_data()))


def test_unsupported_settings_name_the_parameter(decoder):
    q = PercentileQuantizer().fit(_data())
    with pytest.raises(ValueError, match="dtype"):
        to_onnx(q, dtype="float16")
    with pytest.raises(ValueError, match="target_opset"):
        to_onnx(q, target_opset=13)
    with pytest.raises(ValueError, match="output_dim"):
        to_onnx(decoder.set_params(output_dim=99))
    decoder.set_params(output_dim=None)
    with pytest.raises(NotFittedError):
        to_onnx(PercentileQuantizer())
    with pytest.raises(TypeError, match="first step"):
        to_onnx(make_pipeline(q, ConcatEmbedder(["x"])))


# -- members ---------------------------------------------------------------------------


def _cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def sample_texts(tiny_corpus):
    texts = load_sample_passages(limit=60) + tiny_corpus
    return [t for t in texts if t]  # an empty text has no direction to compare


def test_transformer_member_matches_sentence_transformers(
    tiny_model_paths, sample_texts, tmp_path
):
    from sentence_transformers import SentenceTransformer

    st_model = SentenceTransformer(tiny_model_paths[0], device="cpu")
    spec = export_member(st_model, tmp_path / "m", name="tiny")
    assert spec["kind"] == "transformer" and spec["dim"] == 32
    assert {"model.onnx", "tokenizer.json", "member.json"} <= {
        p.name for p in (tmp_path / "m").iterdir()
    }
    got = embed(tmp_path / "m", sample_texts)
    expected = st_model.encode(sample_texts, normalize_embeddings=False)
    assert _cosines(got, expected).min() >= 0.9999
    # the norm too: the graph is the model, not only its direction
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_prompted_member_prepends_its_prompt(tiny_prompted_model_path, tmp_path):
    from sentence_transformers import SentenceTransformer

    st_model = SentenceTransformer(tiny_prompted_model_path, device="cpu")
    export_member(st_model, tmp_path / "p")
    texts = ["vim editor", "a web server"]
    got = embed(tmp_path / "p", texts, prompt="query: ")
    expected = st_model.encode_query(texts, normalize_embeddings=False)
    assert _cosines(got, expected).min() >= 0.9999


def test_static_member_matches_sentence_transformers(
    tiny_model_paths, sample_texts, tmp_path
):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import (
        Normalize,
        StaticEmbedding,
    )

    tok = SentenceTransformer(tiny_model_paths[0], device="cpu").tokenizer
    vocab = tok.backend_tokenizer.get_vocab_size()
    weights = np.random.default_rng(0).standard_normal((vocab, 16)).astype(np.float32)
    static = StaticEmbedding(tok.backend_tokenizer, embedding_weights=weights)
    st_model = SentenceTransformer(modules=[static, Normalize()], device="cpu")
    spec = export_member(st_model, tmp_path / "s", name="static")
    assert spec == {
        "name": "static",
        "kind": "static",
        "dim": 16,
        "max_length": None,
        "add_special_tokens": False,
    }
    got = embed(tmp_path / "s", sample_texts + [""])
    expected = st_model.encode(sample_texts + [""], normalize_embeddings=False)
    assert _cosines(got[:-1], expected[:-1]).min() >= 0.9999
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)  # "" -> zeros


def test_embedder_members_export_and_non_st_members_are_named(
    tiny_model_paths, tiny_corpus, tmp_path
):
    from sklearn.feature_extraction.text import TfidfVectorizer

    emb = ConcatEmbedder([("a", tiny_model_paths[0]), ("b", tiny_model_paths[1])])
    specs = export_members(emb.fit(tiny_corpus), tmp_path)
    assert [(s["name"], s["dim"], s["path"]) for s in specs] == [
        ("a", 32, "0-a"),
        ("b", 48, "1-b"),
    ]
    lexical = ConcatEmbedder([("a", tiny_model_paths[0]), ("words", TfidfVectorizer())])
    with pytest.raises(UnsupportedMemberError, match="member 'words'"):
        export_members(lexical.fit(tiny_corpus), tmp_path / "x")


# -- the whole pipeline: export_pipeline + ExportedPipeline ------------------------------

_HEADS = {
    "percentile-packed": [("quant", PercentileQuantizer(bits=2, pack=True))],
    "allocated-unpacked": [("quant", AllocatedQuantizer(bit_budget=50, random_state=0))],
    "lsh-packed": [("lsh", RandomProjectionLSH(64, random_state=0))],
    "lsh-unpacked": [("lsh", RandomProjectionLSH(40, pack=False, random_state=0))],
    "decoder-floats": [
        ("dec", MatryoshkaDecoder(16, (8, 16), max_epochs=2, random_state=0))
    ],
    "decoder-codes": [
        ("dec", MatryoshkaDecoder(16, (8, 16), max_epochs=2, random_state=0)),
        ("quant", PercentileQuantizer(bits=3, pack=True)),
    ],
}


def _expected_scores(pipe, queries, docs, k):
    """What skfusion.search returns for this head, as the similarity in [-1, 1]."""
    from skfusion.search import search

    q, d = encode(pipe, queries, "query"), encode(pipe, docs, "document")
    last = pipe[-1]
    if isinstance(last, RandomProjectionLSH):
        bits = [np.packbits(x, axis=1) if x.dtype == bool else x for x in (q, d)]
        agree, idx = search(*bits, k, quantizer=last)
        return 1.0 - 2.0 * (last.n_bits_ - agree) / last.n_bits_, idx
    if isinstance(last, (PercentileQuantizer, AllocatedQuantizer)):
        return search(q, d, k, quantizer=last, normalize=True)
    return search(q, d, k)


@pytest.mark.parametrize("head", list(_HEADS), ids=list(_HEADS))
def test_exported_pipeline_runs_the_folder_as_the_pipeline(
    head, tiny_model_paths, tiny_prompted_model_path, tiny_corpus, tmp_path
):
    from sklearn.base import clone
    from sklearn.pipeline import Pipeline

    members = [
        ("a", tiny_model_paths[0]),
        ("b", tiny_model_paths[1]),
        ("p", tiny_prompted_model_path),  # "query: " / "passage: " prompts
    ]
    steps = [(n, clone(s)) for n, s in _HEADS[head]]
    embedder = ConcatEmbedder(members, weights=[1.0, 0.5, 0.7])
    pipe = Pipeline([("embed", embedder), *steps]).fit(tiny_corpus)
    docs = [t for t in tiny_corpus if t]
    config = export_pipeline(pipe, tmp_path / "x", docs)
    assert [m["prompts"] for m in config["members"]][2] == {
        "query": "query: ",
        "document": "passage: ",
    }
    exported = ExportedPipeline(tmp_path / "x", n_threads=1)
    for role in ("query", "document"):
        got = exported.transform(tiny_corpus, role)
        expected = encode(pipe, tiny_corpus, role)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        if expected.dtype.kind == "f":
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        else:
            np.testing.assert_array_equal(got, expected)  # bit for bit
    queries = ["web server", "image editor", "version control", "ünïcödé 漢字"]
    scores, idx = exported.search(queries, k=7)
    expected_scores, expected_idx = _expected_scores(pipe, queries, docs, 7)
    np.testing.assert_array_equal(idx, expected_idx)
    np.testing.assert_allclose(scores, expected_scores, rtol=0, atol=1e-6)
    assert scores.dtype == np.float64 and (np.abs(scores) <= 1 + 1e-6).all()
    assert exported.ids == [str(i) for i in range(len(docs))]


def test_exported_pipeline_says_what_it_cannot_do(tiny_model_paths, tiny_corpus, tmp_path):
    from sklearn.pipeline import Pipeline

    with pytest.raises(FileNotFoundError, match="export_pipeline"):
        ExportedPipeline(tmp_path)
    pipe = Pipeline(
        [("embed", ConcatEmbedder([tiny_model_paths[0]])), ("q", PercentileQuantizer(2))]
    ).fit(tiny_corpus)
    export_pipeline(pipe, tmp_path / "no-corpus")
    exported = ExportedPipeline(tmp_path / "no-corpus")
    assert exported.transform(["vim"], "query").shape == (1, 32)
    with pytest.raises(ValueError, match="holds no corpus"):
        exported.search(["vim"])
    with pytest.raises(ValueError, match="role"):
        exported.transform(["vim"], "passage")
    export_pipeline(pipe, tmp_path / "corpus", tiny_corpus[:5], force=True)
    exported = ExportedPipeline(tmp_path / "corpus")
    for blank in ("", "  \t"):
        with pytest.raises(ValueError, match=r"texts\[1\] is empty"):
            exported.search(["vim", blank])
    with pytest.raises(TypeError, match="one string"):
        exported.transform("vim")
    # a folder of other files is refused, as export_web refuses it
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="force=True"):
        export_pipeline(pipe, tmp_path / "mine")
