"""ConcatEmbedder behaviour with tiny local models (offline, a few seconds)."""

import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import time

import joblib
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sentence_transformers import SentenceTransformer
from sklearn.base import clone
from sklearn.decomposition import TruncatedSVD
from sklearn.exceptions import NotFittedError
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.utils import estimator_checks
from sklearn.utils._param_validation import InvalidParameterError

from skfusion._numeric import normalize_rows
from skfusion.embedder import CallPlan, ConcatEmbedder
from skfusion.members import EncoderMember


def _lsa(k=8):
    return make_pipeline(TfidfVectorizer(), TruncatedSVD(k, random_state=0))


def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


@pytest.fixture(scope="module")
def st_models(tiny_model_paths, tiny_prompted_model_path):
    paths = [*tiny_model_paths, tiny_prompted_model_path]
    return {p: SentenceTransformer(p, device="cpu") for p in paths}


@pytest.fixture(scope="module")
def fitted(tiny_model_paths, tiny_corpus):
    """A fitted three-member embedder: two tiny BERTs by path plus TF-IDF/SVD."""
    a, b = tiny_model_paths
    return ConcatEmbedder([a, b, _lsa()], show_progress_bar=False).fit(tiny_corpus)


# -- shapes, normalisation, weights ------------------------------------------------


def test_shapes_names_and_dtype(fitted, tiny_corpus):
    X = fitted.transform(tiny_corpus)
    assert X.shape == (len(tiny_corpus), 32 + 48 + 8)
    assert X.dtype == np.float32
    assert fitted.dims_.tolist() == [32, 48, 8]
    assert fitted.n_features_out_ == 88
    assert fitted.member_names_ == ["tiny-bert-a", "tiny-bert-b", "pipeline"]
    # Random tiny models still separate texts (a broken tokenizer would not).
    assert np.unique(np.round(X[:, :32], 4), axis=0).shape[0] == len(tiny_corpus)


def test_blocks_are_normalised_member_outputs(
    fitted, st_models, tiny_model_paths, tiny_corpus
):
    X = fitted.transform(tiny_corpus)
    a, b = tiny_model_paths
    np.testing.assert_allclose(
        X[:, :32], _unit(st_models[a].encode(tiny_corpus)), atol=1e-5
    )
    np.testing.assert_allclose(
        X[:, 32:80], _unit(st_models[b].encode(tiny_corpus)), atol=1e-5
    )
    # The scikit-learn member is a clone fit on the fit passages.
    lsa = _lsa().fit(tiny_corpus)
    np.testing.assert_allclose(X[:, 80:], _unit(lsa.transform(tiny_corpus)), atol=1e-5)
    # Three unit blocks; the empty string has no TF-IDF terms, so its LSA block is 0.
    expected_norms = [np.sqrt(2) if t == "" else np.sqrt(3) for t in tiny_corpus]
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), expected_norms, rtol=1e-5)


@pytest.fixture(scope="module")
def shared_cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("shared-cache")


@settings(max_examples=20, deadline=None)
@given(weights=st.lists(st.floats(0.05, 20, allow_nan=False), min_size=3, max_size=3))
def test_weighted_cosine_identity(weights, tiny_model_paths, tiny_corpus, shared_cache_dir):
    # Weights apply after the cache: every example after the first encodes nothing.
    a, b = tiny_model_paths
    emb = ConcatEmbedder(
        [a, b, _lsa()],
        weights=weights,
        cache_dir=shared_cache_dir,
        show_progress_bar=False,
    ).fit(tiny_corpus[:40])
    texts = tiny_corpus[:12]
    X = emb.transform(texts).astype(np.float64)
    cos = _unit(X) @ _unit(X).T
    offsets = np.r_[0, np.cumsum(emb.dims_)]
    w2 = np.square(np.asarray(weights, dtype=np.float64))
    expected = (
        sum(
            w2[m] * (_unit(X[:, s:e]) @ _unit(X[:, s:e]).T)
            for m, (s, e) in enumerate(zip(offsets[:-1], offsets[1:], strict=True))
        )
        / w2.sum()
    )
    np.testing.assert_allclose(cos, expected, atol=1e-5)
    # Each block's norm is its weight.
    for m, (s, e) in enumerate(zip(offsets[:-1], offsets[1:], strict=True)):
        np.testing.assert_allclose(np.linalg.norm(X[:, s:e], axis=1), weights[m], rtol=1e-5)


def test_normalize_false_gives_raw_weighted_outputs(
    tiny_model_paths, st_models, tiny_corpus
):
    a = tiny_model_paths[0]
    emb = ConcatEmbedder([a, _lsa()], normalize=False, weights=[2.0, 0.5])
    X = emb.fit(tiny_corpus).transform(tiny_corpus)
    np.testing.assert_allclose(
        X[:, :32], 2.0 * st_models[a].encode(tiny_corpus), rtol=1e-5, atol=1e-6
    )
    lsa = _lsa().fit(tiny_corpus)
    np.testing.assert_allclose(
        X[:, 32:], 0.5 * lsa.transform(tiny_corpus), rtol=1e-4, atol=1e-6
    )


def test_all_zero_member_output_stays_zero(tiny_corpus):
    emb = ConcatEmbedder([TfidfVectorizer()]).fit(tiny_corpus)
    X = emb.transform(["zzzz qqqq", "vim editor"])
    assert np.isfinite(X).all()
    assert not X[0].any()
    assert np.linalg.norm(X[1]) == pytest.approx(1.0, rel=1e-6)


class ControlledEncoder:
    """A user's encoder object whose output per text the test sets (``bad``)."""

    fingerprint = "controlled-encoder v1"

    def __init__(self):
        self.bad = {}  # text -> the value every entry of its vector gets
        self.scale = 1.0  # multiplies every vector
        self.calls = []

    def encode_document(self, texts):
        self.calls.append(list(texts))
        out = self.scale * np.array([[len(t) + 1.0, 1.0, -2.0, 0.5] for t in texts])
        for i, t in enumerate(texts):
            if t in self.bad:
                out[i] = self.bad[t]
        return out

    encode_query = encode_document


@pytest.mark.parametrize(
    "value, match",
    [
        (np.nan, r"non-finite value \(nan\)"),
        (np.inf, r"non-finite value \(inf\)"),
        (1e300, r"magnitude 1e\+300, beyond float32's range"),  # inf after the cast
        (1e-300, r"too small for float32"),  # zero after the cast
        (1e-40, r"too small for float32"),  # subnormal after the cast
    ],
)
def test_bad_member_output_raises_and_is_never_cached(value, match, tmp_path):
    encoder = ControlledEncoder()
    emb = ConcatEmbedder([("ctl", encoder)], cache_dir=tmp_path).fit([])
    texts = ["fine", "broken", "fine", "also fine"]
    expected = _unit(encoder.encode_document(["fine", "broken", "fine", "also fine"]))
    encoder.bad = {"broken": value}
    where = r"member 'ctl' returned .* for the text at position 1 of X \('broken'\)"
    with pytest.raises(ValueError, match=where) as info:
        emb.transform(texts)
    assert info.match(match)
    assert info.type.__name__ == "MemberOutputError"
    with pytest.raises(ValueError, match=where):
        emb.set_params(cache_dir=None).transform(texts)
    emb.set_params(cache_dir=tmp_path)
    # The member recovers: the right vectors, none of them a cached bad row.
    encoder.bad = {}
    np.testing.assert_allclose(emb.transform(texts), expected, rtol=1e-6)
    encoder.calls.clear()
    np.testing.assert_allclose(emb.transform(texts), expected, rtol=1e-6)
    assert encoder.calls == []  # now all cached


def test_bad_row_in_a_later_call_keeps_earlier_good_rows_cached(tmp_path):
    encoder = ControlledEncoder()
    emb = ConcatEmbedder(
        [("ctl", encoder)], cache_dir=tmp_path, batch_size=1, show_progress_bar=False
    ).fit([])
    texts = ["aaaa", "bbb", "cc", "d"]  # longest first: the first call has "aaaa" only
    encoder.bad, encoder.calls = {"cc": np.nan}, []
    with pytest.raises(ValueError, match=r"position 2 of X \('cc'\)"):
        emb.transform(texts)
    assert encoder.calls[0] == ["aaaa"]
    encoder.bad, encoder.calls = {}, []
    X = emb.transform(texts)
    assert np.isfinite(X).all()
    encoded = [t for call in encoder.calls for t in call]
    assert sorted(encoded) == ["bbb", "cc", "d"]  # "aaaa" came from the cache


@pytest.mark.parametrize("scale", [1e20, 1e-25, 2e37])
def test_member_outputs_of_any_float32_scale_are_normalised(scale):
    # Squares of these overflow or underflow float32: a plain norm gives zero rows
    # (1e20, 2e37) or leaves the rows unnormalised (1e-25).
    encoder = ControlledEncoder()
    emb = ConcatEmbedder([("ctl", encoder)]).fit([])
    texts = ["big or small", "other"]
    expected = _unit(encoder.encode_document(texts))
    encoder.scale = scale
    np.testing.assert_allclose(emb.transform(texts), expected, rtol=1e-6)


def test_weight_overflowing_raw_outputs_raises():
    encoder = ControlledEncoder()
    encoder.scale = 1e37
    emb = ConcatEmbedder([("ctl", encoder)], weights=[100.0], normalize=False).fit([])
    with pytest.raises(ValueError, match=r"weights\[0\]=100 .*'ctl' overflows float32"):
        emb.transform(["a"])
    assert np.isfinite(emb.set_params(normalize=True).transform(["a"])).all()


def test_exact_zero_member_output_is_valid_and_stays_zero():
    encoder = ControlledEncoder()
    encoder.bad = {"nothing known": 0.0}
    emb = ConcatEmbedder([("ctl", encoder)]).fit([])
    X = emb.transform(["nothing known", "x"])
    assert not X[0].any() and np.linalg.norm(X[1]) == pytest.approx(1.0)


def test_sparse_member_output_is_densified(tiny_corpus):
    tfidf = TfidfVectorizer().fit(tiny_corpus)
    emb = ConcatEmbedder([tfidf]).fit(tiny_corpus)
    X = emb.transform(tiny_corpus[:5])
    assert isinstance(X, np.ndarray) and X.shape[1] == len(tfidf.vocabulary_)


# -- input -------------------------------------------------------------------------


def test_containers_duplicates_and_empty(fitted, tiny_corpus):
    texts = tiny_corpus[:6]
    ref = fitted.transform(texts)
    for container in (tuple(texts), np.array(texts), np.array(texts, dtype=object)):
        np.testing.assert_array_equal(fitted.transform(container), ref)
    np.testing.assert_array_equal(
        fitted.transform(pd.Series(texts, index=range(10, 16))), ref
    )
    doubled = fitted.transform(texts + texts[::-1])
    np.testing.assert_array_equal(doubled[:6], ref)
    np.testing.assert_array_equal(doubled[6:], ref[::-1])
    empty = fitted.transform([])
    assert empty.shape == (0, fitted.n_features_out_) and empty.dtype == np.float32


def test_empty_string_is_embedded_like_any_text(fitted, st_models, tiny_model_paths):
    X = fitted.transform(["", "vim"])
    model = st_models[tiny_model_paths[0]]
    np.testing.assert_allclose(X[:, :32], _unit(model.encode(["", "vim"])), atol=1e-5)


BAD_ELEMENTS = [
    (None, "None"),
    (float("nan"), "NaN"),
    (3, "int"),
    (b"bytes", "bytes"),
    (pd.NA, "pandas.NA"),
]


@pytest.mark.parametrize("bad, shown", BAD_ELEMENTS)
@pytest.mark.parametrize("method", ["fit", "transform", "encode_queries"])
def test_bad_element_names_its_position(fitted, bad, shown, method):
    texts = ["a", "b", bad, "c"]
    target = ConcatEmbedder([TfidfVectorizer()]) if method == "fit" else fitted
    with pytest.raises(ValueError, match=rf"X\[2\] is .*{shown}"):
        getattr(target, method)(texts)


@pytest.mark.parametrize(
    "X, error, match",
    [
        ("one string", ValueError, "single str.*Wrap it in a list"),
        (np.array([["a"], ["b"]]), ValueError, "must be 1-D"),
        (pd.DataFrame({"t": ["a"]}), ValueError, "DataFrame.*Series"),
        ({"a", "b"}, TypeError, "list, tuple, 1-D numpy array or pandas Series"),
        (np.array([1.0, 2.0]), ValueError, "dtype float64"),
    ],
)
def test_bad_containers(fitted, X, error, match):
    with pytest.raises(error, match=match):
        fitted.transform(X)


def test_not_fitted(tiny_model_paths):
    emb = ConcatEmbedder(tiny_model_paths)
    for call in (
        lambda: emb.transform(["a"]),
        lambda: emb.encode_queries(["a"]),
        lambda: emb.encode_documents(["a"]),
        emb.get_feature_names_out,
    ):
        with pytest.raises(NotFittedError):
            call()


# -- parameters --------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"models": []}, ValueError, "models is empty"),
        ({"models": ("x",)}, InvalidParameterError, "'models' parameter"),
        ({"models": [42]}, ValueError, r"models\[0\] must be .*got int"),
        ({"models": [("", TfidfVectorizer())]}, ValueError, r"models\[0\].*pair"),
        ({"models": [("a", TfidfVectorizer(), 1)]}, ValueError, "pair"),
        (
            {"models": [("t", TfidfVectorizer()), ("t", TfidfVectorizer())]},
            ValueError,
            "duplicate member names",
        ),
        ({"weights": [1.0, 2.0]}, ValueError, "one weight per member"),
        ({"weights": [0.0]}, ValueError, "> 0"),
        ({"weights": [float("nan")]}, ValueError, "finite"),
        ({"weights": ["heavy"]}, ValueError, "weights must be"),
        ({"prompts": {"nope": {"query": "q: "}}}, ValueError, "not a member name"),
        ({"prompts": {"tfidf": {"question": "q"}}}, ValueError, "keys among"),
        ({"prompts": {"tfidf": "q: "}}, ValueError, "must be a dict"),
        ({"prompt_name": "passage"}, InvalidParameterError, "prompt_name"),
        ({"batch_size": 0}, InvalidParameterError, "batch_size"),
        ({"max_seq_length": 0}, InvalidParameterError, "max_seq_length"),
        ({"device": 0}, InvalidParameterError, "device"),
        ({"normalize": "yes"}, InvalidParameterError, "normalize"),
    ],
)
def test_bad_parameters_raise_at_fit(kwargs, error, match, tiny_corpus):
    params = {"models": [("tfidf", TfidfVectorizer())], **kwargs}
    with pytest.raises(error, match=match):
        ConcatEmbedder(**params).fit(tiny_corpus)


def test_parameters_changed_after_fit_are_checked(tiny_corpus):
    emb = ConcatEmbedder([("tfidf", TfidfVectorizer())]).fit(tiny_corpus)
    with pytest.raises(ValueError, match="one weight per member"):
        emb.set_params(weights=[1, 2]).transform(["a"])
    with pytest.raises(InvalidParameterError, match="prompt_name"):
        emb.set_params(weights=None, prompt_name="passages").transform(["a"])
    emb.set_params(prompt_name=None, models=[TfidfVectorizer(), TfidfVectorizer()])
    with pytest.raises(ValueError, match="call fit again"):
        emb.transform(["a"])


def test_unloadable_model_name_raises_clear_error(tmp_path, tiny_corpus):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(OSError, match=r"member 'no-such-model'.*no-such-model"):
        ConcatEmbedder([missing]).fit(tiny_corpus)


def test_sklearn_member_that_cannot_fit_is_named(tiny_corpus):
    with pytest.raises(ValueError, match="member 'svd'.*TruncatedSVD"):
        ConcatEmbedder([("svd", TruncatedSVD(2))]).fit(tiny_corpus)
    with pytest.raises(ValueError, match="no texts.*'tfidf'"):
        ConcatEmbedder([("tfidf", TfidfVectorizer())]).fit([])


def test_default_names_are_deduplicated(tiny_model_paths, tiny_corpus):
    a = tiny_model_paths[0]
    emb = ConcatEmbedder([a, a, ("tiny-bert-a-1", TfidfVectorizer()), _lsa()])
    emb.fit(tiny_corpus)
    assert emb.member_names_ == [
        "tiny-bert-a-2",
        "tiny-bert-a-3",
        "tiny-bert-a-1",
        "pipeline",
    ]
    names = emb.get_feature_names_out()
    assert names[0] == "tiny-bert-a-2_0" and names[-1] == "pipeline_7"
    assert len(set(names)) == len(names) == emb.n_features_out_


# -- prompts -----------------------------------------------------------------------


def test_configured_prompts_reach_the_model(
    tiny_prompted_model_path, st_models, tiny_corpus
):
    path = tiny_prompted_model_path
    model = st_models[path]
    emb = ConcatEmbedder([("p", path)], show_progress_bar=False).fit(tiny_corpus)
    texts = tiny_corpus[:8]

    def expected(prefix):
        return _unit(model.encode([prefix + t for t in texts]))

    np.testing.assert_allclose(emb.encode_queries(texts), expected("query: "), atol=1e-5)
    np.testing.assert_allclose(
        emb.encode_documents(texts), expected("passage: "), atol=1e-5
    )
    np.testing.assert_allclose(emb.transform(texts), expected(""), atol=1e-5)
    assert emb.prompt_name is None  # the helpers change no parameter
    # The prompt really changes the vectors (so the checks above can fail).
    assert np.abs(expected("query: ") - expected("")).max() > 1e-3
    emb.set_params(prompt_name="query")
    np.testing.assert_allclose(emb.transform(texts), expected("query: "), atol=1e-5)


def test_prompts_parameter_overrides_per_member(
    tiny_prompted_model_path, tiny_model_paths, st_models, tiny_corpus
):
    p, a = tiny_prompted_model_path, tiny_model_paths[0]
    emb = ConcatEmbedder(
        [("p", p), ("a", a), ("lsa", _lsa())],
        prompts={"p": {"query": "search: "}, "a": {"query": "q: ", "document": ""}},
        prompt_name="query",
    ).fit(tiny_corpus)
    texts = tiny_corpus[:8]
    X = emb.transform(texts)
    np.testing.assert_allclose(
        X[:, :24],
        _unit(st_models[p].encode(["search: " + t for t in texts])),
        atol=1e-5,
    )
    np.testing.assert_allclose(
        X[:, 24:56],
        _unit(st_models[a].encode(["q: " + t for t in texts])),
        atol=1e-5,
    )
    # No prompt for a scikit-learn member unless prompts names one.
    lsa = _lsa().fit(tiny_corpus)
    np.testing.assert_allclose(X[:, 56:], _unit(lsa.transform(texts)), atol=1e-5)
    # Documents: "p" keeps its configured prompt, "" switches a's off.
    D = emb.encode_documents(texts)
    np.testing.assert_allclose(
        D[:, :24],
        _unit(st_models[p].encode(["passage: " + t for t in texts])),
        atol=1e-5,
    )
    np.testing.assert_allclose(D[:, 24:56], _unit(st_models[a].encode(texts)), atol=1e-5)


def test_sklearn_member_gets_prompt_from_prompts(tiny_corpus):
    emb = ConcatEmbedder(
        [("tfidf", TfidfVectorizer())],
        prompts={"tfidf": {"query": "vim "}},
    ).fit(tiny_corpus)
    tfidf = TfidfVectorizer().fit(tiny_corpus)
    np.testing.assert_allclose(
        emb.encode_queries(["editor"]),
        _unit(tfidf.transform(["vim editor"]).toarray()),
        atol=1e-6,
    )


def test_pipeline_set_params_prompt_name(tiny_prompted_model_path, tiny_corpus):
    pipe = Pipeline([("embed", ConcatEmbedder([tiny_prompted_model_path]))])
    pipe.fit(tiny_corpus)
    queries = ["text editor", "web server"]
    via_helper = pipe.named_steps["embed"].encode_queries(queries)
    via_params = pipe.set_params(embed__prompt_name="query").transform(queries)
    np.testing.assert_array_equal(via_helper, via_params)


# -- scikit-learn API ----------------------------------------------------------------


def test_feature_names_and_pandas_output(tiny_model_paths, tiny_corpus):
    emb = ConcatEmbedder([("a", tiny_model_paths[0]), ("lsa", _lsa(4))])
    emb.fit(tiny_corpus).set_output(transform="pandas")
    names = emb.get_feature_names_out()
    assert names.tolist() == [f"a_{i}" for i in range(32)] + [f"lsa_{i}" for i in range(4)]
    series = pd.Series(tiny_corpus[:3], index=[7, 8, 9])
    for frame in (emb.transform(series), emb.encode_queries(series)):
        assert isinstance(frame, pd.DataFrame)
        assert frame.columns.tolist() == names.tolist()
        assert frame.index.tolist() == [7, 8, 9]
    frame = emb.fit_transform(tiny_corpus)
    assert isinstance(frame, pd.DataFrame) and frame.shape == (len(tiny_corpus), 36)


def test_tags():
    tags = ConcatEmbedder(["x"]).__sklearn_tags__()
    assert tags.input_tags.string and not tags.input_tags.two_d_array
    assert tags.transformer_tags is not None


DATA_FREE_CHECKS = [
    "check_do_not_raise_errors_in_init_or_set_params",
    "check_estimator_cloneable",
    "check_estimator_repr",
    "check_estimator_tags_renamed",
    "check_get_params_invariance",
    "check_mixin_order",
    "check_no_attributes_set_in_init",
    "check_param_validation",
    "check_parameters_default_constructible",
    "check_set_params",
    "check_valid_tag_types",
]


@pytest.mark.parametrize("check", DATA_FREE_CHECKS)
def test_data_free_estimator_checks(check, tiny_model_paths):
    # sklearn skips its data-based checks for string input (CONVENTIONS 12).
    getattr(estimator_checks, check)("ConcatEmbedder", ConcatEmbedder(tiny_model_paths))


def test_clone_and_get_params_keep_models_out(tiny_model_paths, tiny_corpus):
    emb = ConcatEmbedder(list(tiny_model_paths) + [_lsa()], batch_size=7)
    emb.fit(tiny_corpus)
    params = emb.get_params(deep=False)
    assert params["models"][:2] == list(tiny_model_paths)  # names, not models
    assert params["device"] is None  # resolved at load, never written back
    twin = clone(emb)
    assert not hasattr(twin, "dims_") and twin.batch_size == 7
    np.testing.assert_array_equal(
        twin.fit(tiny_corpus).transform(tiny_corpus[:5]), emb.transform(tiny_corpus[:5])
    )


def test_device_parameter(tiny_model_paths, tiny_corpus):
    emb = ConcatEmbedder(tiny_model_paths[:1], device="cpu").fit(tiny_corpus)
    assert emb.get_params()["device"] == "cpu"
    assert emb.transform(tiny_corpus[:2]).shape == (2, 32)


def test_max_seq_length_truncates(tiny_model_paths, st_models, tiny_corpus):
    a = tiny_model_paths[0]
    long_text = " ".join(tiny_corpus)
    short = ConcatEmbedder([a], max_seq_length=8).fit(tiny_corpus)
    full = ConcatEmbedder([a]).fit(tiny_corpus)
    model = st_models[a]
    old = model.max_seq_length
    model.max_seq_length = 8
    try:
        expected = _unit(model.encode([long_text]))
    finally:
        model.max_seq_length = old
    np.testing.assert_allclose(short.transform([long_text]), expected, atol=1e-5)
    assert np.abs(full.transform([long_text]) - expected).max() > 1e-3
    assert (
        short.members_[0].loaded(short._settings()).max_seq_length == old
    )  # restored after use


def test_progress_bar(capsys, tiny_corpus):
    emb = ConcatEmbedder([TfidfVectorizer()], show_progress_bar=True).fit(tiny_corpus)
    emb.transform(tiny_corpus)
    assert "ConcatEmbedder" in capsys.readouterr().err
    emb.set_params(show_progress_bar=False).transform(tiny_corpus)
    assert capsys.readouterr().err == ""
    emb.set_params(show_progress_bar=None).transform(tiny_corpus)
    assert capsys.readouterr().err == ""  # a fraction of a second: no bar by default


# -- persistence ----------------------------------------------------------------------


def test_joblib_round_trip_in_fresh_process(tiny_model_paths, tiny_corpus, tmp_path):
    a, b = tiny_model_paths
    instance = SentenceTransformer(b, device="cpu")
    emb = ConcatEmbedder(
        [a, ("b-instance", instance), _lsa()],
        weights=[1.0, 2.0, 0.5],
        show_progress_bar=False,
    ).fit(tiny_corpus)
    expected = emb.transform(tiny_corpus)
    joblib.dump(emb, tmp_path / "emb.joblib")
    (tmp_path / "texts.json").write_text(json.dumps(tiny_corpus))
    script = textwrap.dedent(
        f"""
        import json, joblib, numpy as np
        emb = joblib.load({str(tmp_path / "emb.joblib")!r})
        # Path members are pickled by reference and loaded on first use.
        assert not emb.members_[0].is_loaded
        texts = json.load(open({str(tmp_path / "texts.json")!r}))
        np.save({str(tmp_path / "out.npy")!r}, emb.transform(texts))
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)


def test_pickle_stores_path_members_by_reference(tiny_model_paths, tiny_corpus):
    a = tiny_model_paths[0]
    emb = ConcatEmbedder([a]).fit(tiny_corpus)
    blob = pickle.dumps(emb)
    # A reference costs bytes, not the weights (the tiny model alone is ~80 kB).
    assert len(blob) < 20_000
    assert b"tiny-bert-a" in blob


def test_reference_that_no_longer_resolves(tiny_model_paths, tiny_corpus, tmp_path):
    path = tmp_path / "moved-model"
    shutil.copytree(tiny_model_paths[0], path)
    emb = ConcatEmbedder([("mini", str(path))]).fit(tiny_corpus)
    blob = pickle.dumps(emb)
    shutil.rmtree(path)
    loaded = pickle.loads(blob)
    with pytest.raises(OSError, match=r"member 'mini'.*moved-model.*exists: False"):
        loaded.transform(["a"])


def test_changed_model_at_reference_warns(tiny_model_paths, tiny_corpus, tmp_path):
    import torch

    path = tmp_path / "model"
    shutil.copytree(tiny_model_paths[0], path)
    emb = ConcatEmbedder([("mini", str(path))]).fit(tiny_corpus)
    blob = pickle.dumps(emb)
    model = SentenceTransformer(str(path), device="cpu")
    with torch.no_grad():
        next(model.parameters()).add_(0.5)
    model.save(str(path))
    loaded = pickle.loads(blob)
    with pytest.warns(UserWarning, match="'mini'.*differs from the one this embedder"):
        loaded.transform(["a"])


def test_relative_path_is_stored_absolute(tiny_model_paths, tiny_corpus, monkeypatch):
    parent, name = os.path.split(tiny_model_paths[0])
    monkeypatch.chdir(parent)
    emb = ConcatEmbedder([name]).fit(tiny_corpus)
    assert emb.members_[0].ref_ == tiny_model_paths[0]


# -- threads --------------------------------------------------------------------------


def test_max_seq_length_is_thread_safe_on_a_shared_model(tiny_model_paths, tiny_corpus):
    from concurrent.futures import ThreadPoolExecutor

    # Two embedders share one model instance; one truncates, one does not. Run them
    # from many threads at once: each must give its own result, and the model must
    # be left as it was (a leaked limit would silently truncate later calls).
    model = SentenceTransformer(tiny_model_paths[0], device="cpu")
    original = model.max_seq_length
    long_texts = [" ".join(tiny_corpus[i : i + 20]) for i in range(8)]
    short = ConcatEmbedder([model], max_seq_length=4).fit(tiny_corpus)
    full = ConcatEmbedder([model]).fit(tiny_corpus)
    expected = {"short": short.transform(long_texts), "full": full.transform(long_texts)}
    assert np.abs(expected["short"] - expected["full"]).max() > 1e-3
    embedders = {"short": short, "full": full}
    jobs = ["short", "full"] * 40
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda k: embedders[k].transform(long_texts), jobs))
    for kind, got in zip(jobs, results, strict=True):
        np.testing.assert_allclose(got, expected[kind], atol=1e-5, err_msg=kind)
    assert model.max_seq_length == original
    np.testing.assert_allclose(full.transform(long_texts), expected["full"], atol=1e-5)


def test_first_transform_from_threads_loads_the_model_once(
    tiny_model_paths, tiny_corpus, tmp_path, caplog
):
    import logging
    import threading
    from concurrent.futures import ThreadPoolExecutor

    joblib.dump(ConcatEmbedder([tiny_model_paths[0]]).fit(tiny_corpus), tmp_path / "e")
    emb = joblib.load(tmp_path / "e")
    start = threading.Barrier(4)

    def work(_):
        start.wait()
        return emb.transform(tiny_corpus[:4])

    with caplog.at_level(logging.INFO, logger="sentence_transformers"):
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(work, range(4)))
    loads = [r for r in caplog.records if "Loading SentenceTransformer" in r.getMessage()]
    assert len(loads) == 1
    for got in results[1:]:
        np.testing.assert_array_equal(got, results[0])


def test_lone_surrogate_names_its_position(fitted, tiny_corpus):
    with pytest.raises(ValueError, match=r"X\[2\] holds a lone surrogate U\+D800 at char"):
        fitted.transform(["a", "b", "x\ud800y"])
    with pytest.raises(ValueError, match=r"X\[1\] .*surrogate"):
        fitted.encode_queries(["a", "\udcff"])
    # scikit-learn members take any str: nothing to refuse.
    tfidf = ConcatEmbedder([TfidfVectorizer()]).fit(tiny_corpus)
    assert tfidf.transform(["vim \ud800"]).shape == (1, tfidf.n_features_out_)


def _slow_lengths(texts):
    time.sleep(0.01 * len(texts))  # a slow model: 100 texts/s
    return np.array([[len(t), t.count("e") + 1.0] for t in texts])


@pytest.mark.parametrize(
    ("show", "n_texts", "shown"),
    [
        (None, 300, True),  # 3 s of work: the default shows a bar
        (None, 5, False),  # a short call stays silent by default
        (True, 5, True),
        (False, 300, False),
    ],
)
def test_progress_bar_shows_for_long_work_by_default(show, n_texts, shown, capsys):
    from sklearn.preprocessing import FunctionTransformer

    emb = ConcatEmbedder(
        [FunctionTransformer(_slow_lengths)], batch_size=10, show_progress_bar=show
    ).fit(["a"])
    capsys.readouterr()
    emb.transform([f"text {i}" for i in range(n_texts)])
    out, err = capsys.readouterr()
    assert out == ""  # progress never mixes with a command's output
    assert ("ConcatEmbedder" in err) is shown, err


# -- the call plan -------------------------------------------------------------------


def _text_lengths(texts):
    return np.array([[len(t), 1.0] for t in texts])


class _ThreeBatchesPerCall(EncoderMember):
    """A user's member that asks for 3 batches per model call (as a remote one does)."""

    max_batches_per_call = 3


@settings(max_examples=60, deadline=None)
@given(
    texts=st.lists(st.text(alphabet="ab ", max_size=5), max_size=40),
    batch_size=st.integers(1, 3),
)
def test_call_plan_covers_each_distinct_text_once_per_member(texts, batch_size):
    member = _ThreeBatchesPerCall(query=_text_lengths, document=_text_lengths)
    emb = ConcatEmbedder(
        [("lsa", TfidfVectorizer(analyzer="char")), ("paged", member)],
        batch_size=batch_size,
    ).fit(["ab", "b a"])
    plan = emb.call_plan(texts)
    assert plan.member_names == ("lsa", "paged")
    assert plan.call_sizes == (32 * batch_size, 3 * batch_size)
    # unique: the first occurrence of each distinct text; inverse maps every row back.
    assert [texts[i] for i in plan.unique] == list(dict.fromkeys(texts))
    assert [texts[plan.unique[j]] for j in plan.inverse] == texts
    encoding_order = plan.unique[plan.order]
    # Longest first, ties in input order.
    assert [(-len(texts[i]), i) for i in encoding_order] == sorted(
        (-len(texts[i]), i) for i in plan.unique
    )
    for m, size in enumerate(plan.call_sizes):
        calls = plan.calls[m]
        # Every distinct text exactly once, in encoding order, in full calls but the last.
        flat = np.concatenate(calls) if calls else np.zeros(0, np.intp)
        np.testing.assert_array_equal(flat, encoding_order)
        assert all(len(c) == size for c in calls[:-1])
        assert all(0 < len(c) <= size for c in calls[-1:])
    # A caller holding only lengths and digests (a cluster's driver) gets the same plan.
    digests = np.array([t.encode("utf-8") for t in texts], dtype="S16")
    by_digest = emb.call_plan(digests, lengths=[len(t) for t in texts])
    for field in ("unique", "inverse", "order"):
        np.testing.assert_array_equal(getattr(by_digest, field), getattr(plan, field))


def test_transform_makes_exactly_the_plans_model_calls():
    encoder = ControlledEncoder()
    emb = ConcatEmbedder([("ctl", encoder)], batch_size=1, show_progress_bar=False)
    distinct = [f"text {'x' * (i % 7)} {i % 10}" for i in range(45)]  # many ties
    texts = distinct + distinct[::-1]
    emb.fit(texts)
    encoder.calls.clear()
    emb.transform(texts)
    plan = emb.call_plan(texts)
    assert len(plan.calls[0]) == 2  # 32 + 13: several calls
    assert encoder.calls == [[texts[i] for i in call] for call in plan.calls[0]]


def test_transform_equals_executing_the_plan(tiny_model_paths, tiny_corpus):
    # batch_size=2: calls of 64 texts, so the rows of the tiny models depend on which
    # texts share a call and a batch.
    texts = tiny_corpus + [t.upper() for t in tiny_corpus] + tiny_corpus[3:20]
    texts += [f"{a} {b}" for a, b in zip(tiny_corpus, tiny_corpus[5:], strict=False)]
    emb = ConcatEmbedder(
        [*tiny_model_paths, ("lsa", _lsa())], batch_size=2, show_progress_bar=False
    ).fit(texts)
    plan = emb.call_plan(texts)
    assert min(len(calls) for calls in plan.calls) >= 2
    settings = emb._settings()

    def execute(calls_of):
        blocks = []
        for m, calls in zip(emb.members_, calls_of, strict=True):
            block = np.empty((len(plan.unique), m.dim_), dtype=np.float32)
            row = {int(p): j for j, p in enumerate(plan.unique)}
            for call in calls:
                texts_ = [texts[i] for i in call]
                block[[row[int(p)] for p in call]] = m.encode(texts_, None, "", settings)
            blocks.append(normalize_rows(block))
        return np.concatenate(blocks, axis=1)[plan.inverse]

    got = emb.transform(texts)
    assert got.tobytes() == execute(plan.calls).tobytes()
    # The test can fail: other calls (the first text alone, then the plan's cuts
    # shifted by one) put other texts in one batch and change the bits.
    shifted = []
    for calls, n in zip(plan.calls, plan.call_sizes, strict=True):
        flat = np.concatenate(calls)
        shifted.append([flat[:1]] + [flat[s : s + n] for s in range(1, len(flat), n)])
    assert got.tobytes() != execute(shifted).tobytes()


def test_call_plan_refuses_bad_input_naming_the_fix(fitted):
    with pytest.raises(NotFittedError):
        ConcatEmbedder([_lsa()]).call_plan(["a"])
    with pytest.raises(ValueError, match=r"X\[1\] is None"):
        fitted.call_plan(["a", None])
    with pytest.raises(ValueError, match="one length per key"):
        fitted.call_plan(np.array([b"a", b"b"], dtype="S16"), lengths=[1])
    with pytest.raises(ValueError, match="non-negative integers"):
        fitted.call_plan(["a", "b"], lengths=[1.5, 2])
    with pytest.raises(ValueError, match="call_sizes must give each member"):
        CallPlan.from_lengths([1], ["a"], call_sizes=(0,))
