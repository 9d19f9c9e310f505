"""MTEB adapter and local BEIR task: MTEB scores equal skfusion.metrics on one run."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer

from skfusion.datasets import load_beir, load_sample, load_sample_passages
from skfusion.metrics import evaluate

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mteb") is None, reason="mteb not installed"
)

METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")


@pytest.fixture(scope="module", autouse=True)
def _mteb_cache(tmp_path_factory):
    # `import mteb` creates its result-cache folder: keep it out of the home directory.
    with pytest.MonkeyPatch.context() as mp:
        cache = tmp_path_factory.mktemp("mteb-cache")
        mp.setenv("MTEB_CACHE", str(cache))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield cache


@pytest.fixture(scope="module")
def tiny_beir(tmp_path_factory):
    """A 60-document, 15-query BEIR folder cut from the bundled sample (plain jsonl)."""
    dev = load_sample("dev")
    qids = dev.query_ids[:15]
    wanted = {d for q in qids for d in dev.qrels[q]}
    others = [d for d in dev.corpus_ids if d not in wanted][: 60 - len(wanted)]
    keep = wanted | set(others)
    folder = tmp_path_factory.mktemp("tiny-beir")
    texts = dict(zip(dev.corpus_ids, dev.corpus_texts, strict=True))
    with open(folder / "corpus.jsonl", "w") as f:
        for i, doc_id in enumerate(d for d in dev.corpus_ids if d in keep):
            # Some titles, so both readers must join title and text the same way.
            title, text = ("Package", texts[doc_id]) if i % 3 == 0 else ("", texts[doc_id])
            f.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    qtexts = dict(zip(dev.query_ids, dev.query_texts, strict=True))
    with open(folder / "queries.jsonl", "w") as f:
        for q in qids:
            f.write(json.dumps({"_id": q, "text": qtexts[q]}) + "\n")
    (folder / "qrels").mkdir()
    with open(folder / "qrels" / "dev.tsv", "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for q in qids:
            for d, g in dev.qrels[q].items():
                f.write(f"{q}\t{d}\t{g}\n")
    return folder


@pytest.fixture(scope="module")
def svd_pipe():
    passages = load_sample_passages(limit=400)
    return make_pipeline(TfidfVectorizer(), TruncatedSVD(24, random_state=0)).fit(passages)


def _mteb_scores(encoder, folder, split="dev"):
    from skfusion.mteb_task import beir_retrieval_task, run_mteb

    task = beir_retrieval_task(folder, splits=[split])
    result = run_mteb(encoder, task)
    return result.task_results[0].scores[split][0]


def _assert_same(mteb_scores, ours):
    # MTEB rounds nDCG and recall to 5 decimals; MRR is not rounded.
    for spec in METRICS:
        name, _, k = spec.partition("@")
        key = f"{'ndcg' if name == 'ndcg' else name}_at_{k}"
        tol = 1e-9 if name == "mrr" else 5e-6 + 1e-9
        assert mteb_scores[key] == pytest.approx(ours[spec], abs=tol), spec


def _run(query_ids, doc_ids, scores):
    return {
        q: {d: float(s) for d, s in zip(doc_ids, row, strict=True)}
        for q, row in zip(query_ids, scores, strict=True)
    }


def test_float_pipeline_mteb_equals_skfusion_metrics(tiny_beir, svd_pipe):
    from skfusion.mteb_task import MTEBEncoder

    enc = MTEBEncoder(svd_pipe, name="test/tfidf-svd")
    assert enc.similarity_name == "cosine"
    data = load_beir(tiny_beir, split="dev")
    queries = enc.encode_texts(data.query_texts, "query")
    docs = enc.encode_texts(data.corpus_texts, "document")
    ours = evaluate(
        _run(data.query_ids, data.corpus_ids, enc.similarity(queries, docs)),
        data.qrels,
        METRICS,
    )
    assert 0.05 < ours["ndcg@10"] < 1.0  # a real, non-trivial ranking
    _assert_same(_mteb_scores(enc, tiny_beir), ours)


class _RoleAwareTfidf(TfidfVectorizer):
    """A text embedder whose query encoding differs from its document encoding.

    Queries are negated, which reverses every ranking: the MTEB score can only match the
    reversed run if MTEB's query/document prompt types reach the right method.
    """

    def encode_queries(self, texts):
        return -self.transform(texts).toarray()

    def encode_documents(self, texts):
        return self.transform(texts).toarray()


def test_prompt_type_selects_query_and_document_encoding(tiny_beir):
    from skfusion.mteb_task import MTEBEncoder

    data = load_beir(tiny_beir, split="dev")
    embedder = _RoleAwareTfidf().fit(load_sample_passages(limit=400))
    enc = MTEBEncoder(embedder, name="test/role-aware")
    q = enc.encode_texts(data.query_texts, "query")
    d = enc.encode_texts(data.corpus_texts, "document")
    np.testing.assert_allclose(q, embedder.encode_queries(data.query_texts))
    np.testing.assert_allclose(d, embedder.encode_documents(data.corpus_texts))
    reversed_run = evaluate(
        _run(data.query_ids, data.corpus_ids, enc.similarity(q, d)), data.qrels, METRICS
    )
    same_role = evaluate(
        _run(data.query_ids, data.corpus_ids, enc.similarity(-q, d)), data.qrels, METRICS
    )
    assert reversed_run["ndcg@10"] < same_role["ndcg@10"]
    _assert_same(_mteb_scores(enc, tiny_beir), reversed_run)


def _sign_bits_pipe(svd_pipe):
    bits = FunctionTransformer(lambda x: np.packbits(x > 0, axis=1))
    return make_pipeline(*[s for _, s in svd_pipe.steps], bits)


def test_packed_bits_are_ranked_by_hamming_distance(tiny_beir, svd_pipe):
    from skfusion.mteb_task import MTEBEncoder

    pipe = _sign_bits_pipe(svd_pipe)
    data = load_beir(tiny_beir, split="dev")
    enc = MTEBEncoder(pipe, name="test/sign-bits", similarity="hamming")
    # Independent reference: fewer differing bits = better, computed on the packed codes.
    qcodes = pipe.transform(data.query_texts)
    dcodes = pipe.transform(data.corpus_texts)
    hamming = np.bitwise_count(qcodes[:, None, :] ^ dcodes[None, :, :]).sum(
        axis=2, dtype=np.int64
    )
    ours = evaluate(_run(data.query_ids, data.corpus_ids, -hamming), data.qrels, METRICS)
    # The adapter's inner product of +/-1 vectors is n_bits - 2 * Hamming exactly.
    q = enc.encode_texts(data.query_texts, "query")
    d = enc.encode_texts(data.corpus_texts)
    np.testing.assert_array_equal(enc.similarity(q, d), q.shape[1] - 2 * hamming)
    _assert_same(_mteb_scores(enc, tiny_beir), ours)


def test_integer_output_is_never_compared_with_cosine(svd_pipe):
    from skfusion.mteb_task import MTEBEncoder

    enc = MTEBEncoder(_sign_bits_pipe(svd_pipe), name="test/sign-bits")
    assert enc.similarity_name == "cosine"  # nothing says these are bits...
    with pytest.raises(ValueError, match="must not be compared with 'cosine'.*hamming"):
        enc.encode_texts(["some text"])  # ...so the uint8 output is refused


def test_encoder_argument_errors(svd_pipe):
    from skfusion.mteb_task import MTEBEncoder

    with pytest.raises(TypeError, match="transform"):
        MTEBEncoder(object())
    with pytest.raises(ValueError, match="organisation/model_name"):
        MTEBEncoder(svd_pipe, name="noslash")
    with pytest.raises(ValueError, match="similarity must be one of"):
        MTEBEncoder(svd_pipe, similarity="euclidean")
    with pytest.raises(ValueError, match="needs a fitted code transformer"):
        MTEBEncoder(svd_pipe, similarity="codes")
    with pytest.raises(ValueError, match="weights apply to the code similarity only"):
        MTEBEncoder(svd_pipe, weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="prompt_type must be"):
        MTEBEncoder(svd_pipe).encode_texts(["x"], prompt_type="passage")


def test_encoder_meta_carries_name_and_similarity(svd_pipe, tiny_beir):
    from skfusion.mteb_task import MTEBEncoder

    meta = MTEBEncoder(svd_pipe, name="org/a", revision="r1").mteb_model_meta
    assert (meta.name, meta.revision, str(meta.similarity_fn_name.value)) == (
        "org/a",
        "r1",
        "cosine",
    )
    bits = MTEBEncoder(_sign_bits_pipe(svd_pipe), name="org/b", similarity="hamming")
    assert str(bits.mteb_model_meta.similarity_fn_name.value) == "dot"


def test_task_errors_and_default_name(tiny_beir, tmp_path):
    from skfusion.datasets import sample_path
    from skfusion.mteb_task import beir_retrieval_task

    assert beir_retrieval_task(sample_path()).metadata.name == "LocalDebianSample"
    task = beir_retrieval_task(tiny_beir, name="MyTask", splits="dev")
    assert task.metadata.name == "MyTask" and task.metadata.eval_splits == ["dev"]
    with pytest.raises(FileNotFoundError, match=r"split\(s\) \['test'\]"):
        beir_retrieval_task(tiny_beir, splits=["test"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        beir_retrieval_task(tmp_path / "absent")
    with pytest.raises(ValueError, match="at least one"):
        beir_retrieval_task(tiny_beir, splits=[])


def test_run_mteb_wraps_pipelines_and_writes_no_cache(tiny_beir, svd_pipe, _mteb_cache):
    from skfusion.mteb_task import beir_retrieval_task, run_mteb

    result = run_mteb(svd_pipe, beir_retrieval_task(tiny_beir, splits=["dev"]))
    assert result.model_name == "skfusion/pipeline"
    assert 0 < result.task_results[0].scores["dev"][0]["ndcg_at_10"] <= 1
    written = [p for p in _mteb_cache.rglob("*") if p.is_file()]
    assert written == [], written


def test_import_does_not_need_mteb():
    code = "import sys, skfusion.mteb_task; assert 'mteb' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def _search_run(data, queries, docs, **kwargs):
    from skfusion.search import search

    scores, idx = search(queries, docs, k=len(docs), **kwargs)
    # The real scores (not ranks), so ties are ordered by trec_eval's rule as in MTEB.
    return {
        q: {data.corpus_ids[j]: float(s) for s, j in zip(srow, irow, strict=True)}
        for q, srow, irow in zip(data.query_ids, scores, idx, strict=True)
    }


@pytest.mark.parametrize("pack", [False, True])
@pytest.mark.parametrize("beta", [None, 1.0])
def test_percentile_codes_use_the_code_similarity(tiny_beir, svd_pipe, pack, beta):
    from skfusion.mteb_task import MTEBEncoder
    from skfusion.quantize import PercentileQuantizer
    from skfusion.search import spread_weights

    quant = PercentileQuantizer(bits=2, pack=pack).fit(
        svd_pipe.transform(load_sample_passages(limit=400))
    )
    pipe = make_pipeline(*[s for _, s in svd_pipe.steps], quant)
    weights = None if beta is None else spread_weights(quant, beta)
    enc = MTEBEncoder(pipe, name="test/codes", weights=weights)
    assert enc.similarity_name == "codes"  # detected, not cosine on uint8
    data = load_beir(tiny_beir, split="dev")
    queries, docs = pipe.transform(data.query_texts), pipe.transform(data.corpus_texts)
    run = _search_run(data, queries, docs, metric="codes", quantizer=quant, weights=weights)
    _assert_same(_mteb_scores(enc, tiny_beir), evaluate(run, data.qrels, METRICS))
    assert quant.pack is pack  # restored after encoding


def test_lsh_bits_use_hamming(tiny_beir, svd_pipe):
    from skfusion.lsh import RandomProjectionLSH
    from skfusion.mteb_task import MTEBEncoder

    lsh = RandomProjectionLSH(64, random_state=0).fit(
        svd_pipe.transform(load_sample_passages(limit=400))
    )
    pipe = make_pipeline(*[s for _, s in svd_pipe.steps], lsh)
    enc = MTEBEncoder(pipe, name="test/lsh")
    assert enc.similarity_name == "hamming"
    data = load_beir(tiny_beir, split="dev")
    queries, docs = pipe.transform(data.query_texts), pipe.transform(data.corpus_texts)
    run = _search_run(data, queries, docs, metric="hamming")
    _assert_same(_mteb_scores(enc, tiny_beir), evaluate(run, data.qrels, METRICS))


def test_concat_embedder_members_get_their_query_and_document_prompts(
    tiny_beir, tiny_prompted_model_path
):
    from skfusion.embedder import ConcatEmbedder
    from skfusion.mteb_task import MTEBEncoder

    embedder = ConcatEmbedder([("prompted", tiny_prompted_model_path)], batch_size=16)
    pipe = Pipeline([("embed", embedder)]).fit(load_sample_passages(limit=20))
    data = load_beir(tiny_beir, split="dev")
    enc = MTEBEncoder(pipe, name="test/concat")
    q = enc.encode_texts(data.query_texts, "query")
    d = enc.encode_texts(data.corpus_texts, "document")
    np.testing.assert_array_equal(q, embedder.encode_queries(data.query_texts))
    np.testing.assert_array_equal(d, embedder.encode_documents(data.corpus_texts))
    # The model's configured prompts differ, so the roles give different vectors.
    assert not np.allclose(q, embedder.encode_documents(data.query_texts))
    assert embedder.prompt_name is None  # nothing was left changed
    ours = evaluate(
        _run(data.query_ids, data.corpus_ids, enc.similarity(q, d)), data.qrels, METRICS
    )
    _assert_same(_mteb_scores(enc, tiny_beir), ours)


@pytest.mark.parametrize("pack", [False, True])
def test_allocated_quantizer_codes_use_their_code_values(tiny_beir, svd_pipe, pack):
    # Issue 9 item 6: main classed AllocatedQuantizer output as "cosine" and raised.
    from skfusion.allocation import AllocatedQuantizer
    from skfusion.mteb_task import MTEBEncoder

    quant = AllocatedQuantizer(bit_budget=40, max_bits=3, pack=pack).fit(
        svd_pipe.transform(load_sample_passages(limit=400))
    )
    pipe = make_pipeline(*[s for _, s in svd_pipe.steps], quant)
    enc = MTEBEncoder(pipe, name="test/allocated")
    assert enc.similarity_name == "codes"
    data = load_beir(tiny_beir, split="dev")
    queries, docs = pipe.transform(data.query_texts), pipe.transform(data.corpus_texts)
    vectors = enc.encode_texts(data.corpus_texts, "document")
    np.testing.assert_array_equal(vectors, quant.code_vectors(docs))
    run = _search_run(data, queries, docs, metric="codes", quantizer=quant)
    _assert_same(_mteb_scores(enc, tiny_beir), evaluate(run, data.qrels, METRICS))
