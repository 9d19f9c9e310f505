"""GridSearchCV scorers: neighbourhood preservation (no labels) and retrieval metrics."""

import pickle

import numpy as np
import pytest
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline, make_pipeline

from skfusion.datasets import load_sample, load_sample_passages
from skfusion.decoder import MatryoshkaDecoder
from skfusion.embedder import ConcatEmbedder
from skfusion.evaluation import evaluate_retrieval
from skfusion.lsh import RandomProjectionLSH
from skfusion.quantize import PercentileQuantizer
from skfusion.scoring import NeighbourhoodScorer, RetrievalScorer, bytes_per_vector_scorer


@pytest.fixture(scope="module")
def passages():
    return load_sample_passages(limit=600)


@pytest.fixture(scope="module")
def dev():
    return load_sample("dev")


def _embedder(dim=48):
    lsa = make_pipeline(TfidfVectorizer(), TruncatedSVD(dim, random_state=0))
    return ConcatEmbedder([("lsa", lsa)])


def _brute_force_overlap(ref, out, k):
    def neighbours(X):
        X = X / np.linalg.norm(X, axis=1, keepdims=True)
        S = X @ X.T
        np.fill_diagonal(S, -np.inf)
        return np.argsort(-S, axis=1, kind="stable")[:, :k]

    a, b = neighbours(ref), neighbours(out)
    return np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b, strict=True)])


def test_neighbourhood_score_matches_brute_force(passages):
    held_out = passages[400:]
    pipe = Pipeline([("embed", _embedder()), ("svd", TruncatedSVD(8, random_state=0))]).fit(
        passages[:400]
    )
    score = NeighbourhoodScorer(k=10)(pipe, held_out)
    ref = pipe[:1].transform(held_out)
    out = pipe.transform(held_out)
    assert score == pytest.approx(_brute_force_overlap(ref, out, 10), abs=1e-12)
    assert 0.1 < score < 0.9


def test_neighbourhood_score_is_one_for_the_reference_itself(passages):
    pipe = Pipeline([("embed", _embedder())]).fit(passages[:400])
    assert NeighbourhoodScorer(k=5)(pipe, passages[400:]) == 1.0


def test_neighbourhood_score_orders_compression_levels(passages):
    train, held_out = passages[:400], passages[400:]
    embed = _embedder().fit(train)
    scorer = NeighbourhoodScorer(k=10)
    z = embed.transform(train)

    def score(*steps):
        return scorer(Pipeline([("embed", embed), *steps]), held_out)

    svd = TruncatedSVD(32, random_state=0).fit(z)
    h = svd.transform(z)
    float32 = score(("svd", svd))
    four_bits = score(("svd", svd), ("q", PercentileQuantizer(bits=4).fit(h)))
    one_bit = score(("svd", svd), ("q", PercentileQuantizer(bits=1).fit(h)))
    lsh_256 = score(("lsh", RandomProjectionLSH(256, random_state=0).fit(z)))
    lsh_16 = score(("lsh", RandomProjectionLSH(16, random_state=0).fit(z)))
    assert float32 > four_bits > one_bit
    assert lsh_256 > lsh_16


def test_neighbourhood_reference_options(passages):
    tfidf = TfidfVectorizer().fit(passages[:400])
    pipe = make_pipeline(TfidfVectorizer(), TruncatedSVD(16, random_state=0))
    pipe.fit(passages[:400])
    held_out = passages[400:500]
    by_transformer = NeighbourhoodScorer(k=5, reference=tfidf)(pipe, held_out)
    by_callable = NeighbourhoodScorer(
        k=5, reference=lambda t: tfidf.transform(t).toarray()
    )(pipe, held_out)
    assert by_transformer == by_callable
    assert 0 < by_transformer < 1


def test_grid_search_with_passages_only(passages):
    pipe = Pipeline(
        [
            ("embed", _embedder()),
            ("dec", MatryoshkaDecoder(32, stops=(8, 16, 32), max_epochs=2, random_state=0)),
            ("quant", PercentileQuantizer()),
        ]
    )
    grid = GridSearchCV(
        pipe,
        {"dec__output_dim": [8, 32], "quant__bits": [1, 4]},
        scoring=NeighbourhoodScorer(k=5),
        cv=2,
    ).fit(passages[:400])
    assert grid.best_params_ == {"dec__output_dim": 32, "quant__bits": 4}
    scores = grid.cv_results_["mean_test_score"]
    assert np.all((scores > 0) & (scores < 1))


def test_retrieval_scorer_equals_evaluate_retrieval(passages, dev):
    pipe = Pipeline([("embed", _embedder()), ("svd", TruncatedSVD(16, random_state=0))])
    pipe.fit(passages)
    scorer = RetrievalScorer(dev, metric="mrr@10")
    expected = evaluate_retrieval(pipe, dev, metrics=("mrr@10",))["mrr@10"]
    assert scorer(pipe, passages[:10]) == expected  # the held-out fold is not used
    assert scorer(pipe, None) == expected
    assert 0.05 < expected < 1


def test_grid_search_with_labels_and_trade_off_table(passages, dev):
    pipe = Pipeline(
        [
            ("embed", _embedder()),
            ("dec", MatryoshkaDecoder(32, stops=(8, 32), max_epochs=1, random_state=0)),
            ("quant", PercentileQuantizer()),
        ]
    )
    grid = GridSearchCV(
        pipe,
        {"dec__output_dim": [8, 32], "quant__bits": [1, 2]},
        scoring={"ndcg@10": RetrievalScorer(dev), "bytes": bytes_per_vector_scorer},
        refit="ndcg@10",
        cv=2,
    ).fit(passages[:400])
    res = grid.cv_results_
    table = {
        (p["dec__output_dim"], p["quant__bits"]): (n, b)
        for p, n, b in zip(
            res["params"], res["mean_test_ndcg@10"], res["mean_test_bytes"], strict=True
        )
    }
    # Bytes of one packed row: ceil(dim * bits / 8).
    assert {key: b for key, (_, b) in table.items()} == {
        (8, 1): 1,
        (8, 2): 2,
        (32, 1): 4,
        (32, 2): 8,
    }
    assert table[(32, 2)][0] > table[(8, 1)][0]
    best = max(table, key=lambda key: table[key][0])
    assert grid.best_params_ == {"dec__output_dim": best[0], "quant__bits": best[1]}


def test_bytes_per_vector_scorer(passages):
    embed = _embedder(48).fit(passages[:200])
    assert bytes_per_vector_scorer(Pipeline([("embed", embed)]), passages[:3]) == 48 * 4
    z = embed.transform(passages[:200])
    lsh = RandomProjectionLSH(64, random_state=0).fit(z)
    assert bytes_per_vector_scorer(Pipeline([("e", embed), ("l", lsh)]), passages[:3]) == 8


def test_scorers_pickle(dev):
    for scorer in (NeighbourhoodScorer(k=3), RetrievalScorer(dev, metric="recall@100")):
        again = pickle.loads(pickle.dumps(scorer))
        assert repr(again) == repr(scorer)


def test_scorer_argument_errors(passages, dev):
    with pytest.raises(ValueError, match="k must be a positive integer"):
        NeighbourhoodScorer(k=0)
    with pytest.raises(ValueError, match="reference must be 'embedder'"):
        NeighbourhoodScorer(reference="concat")
    with pytest.raises(ValueError, match="max_passages must be an integer >= 2"):
        NeighbourhoodScorer(max_passages=1)
    pipe = Pipeline([("embed", _embedder(8))]).fit(passages[:100])
    with pytest.raises(ValueError, match="needs more than 10 held-out passages, got 5"):
        NeighbourhoodScorer(k=10)(pipe, passages[:5])
    with pytest.raises(TypeError, match="list of passages"):
        NeighbourhoodScorer()(pipe, "one passage")
    with pytest.raises(TypeError, match="must be a RetrievalDataset"):
        RetrievalScorer({"qrels": {}})
    with pytest.raises(ValueError, match="'ndcg@K', 'recall@K' or 'mrr@K'"):
        RetrievalScorer(dev, metric="map@10")


def test_grid_search_example_runs_small(tmp_path):
    import runpy
    from pathlib import Path

    from skfusion.datasets import sample_path

    script = Path(__file__).resolve().parents[1] / "examples" / "grid_search.py"
    main = runpy.run_path(str(script))["main"]
    lines = []
    plot = tmp_path / "tradeoff.png"
    result = main(
        [
            "--small",
            "--quiet",
            "--data",
            str(sample_path()),
            "--n-train",
            "300",
            "--lexical-dim",
            "32",
            "--output-dims",
            "8",
            "16",
            "--bits",
            "1",
            "2",
            "--epochs",
            "1",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--plot",
            str(plot),
            "--json",
            str(tmp_path / "table.json"),
        ],
        out=lines.append,
    )
    assert plot.stat().st_size > 1000 and plot.read_bytes()[:4] == b"\x89PNG"
    table = result["table"]
    # 2 widths x (2 bit settings + float32) for the one weight setting.
    assert len(table) == 6
    assert {(r["output_dim"], r["bits"], r["bytes"]) for r in table} == {
        (8, 1, 1),
        (8, 2, 2),
        (16, 1, 2),
        (16, 2, 4),
        (8, "float32", 32),
        (16, "float32", 64),
    }
    best = max(table, key=lambda r: r["ndcg@10"])
    assert result["best_dev_ndcg@10"] == pytest.approx(best["ndcg@10"])
    assert 0 < result["best_test_ndcg@10"] <= 1
    assert any("best on dev" in line for line in lines)
    assert (tmp_path / "table.json").is_file()
