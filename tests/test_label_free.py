"""PseudoQueryScorer: choosing member weights in GridSearchCV without labels."""

import pickle

import numpy as np
import pytest
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline, make_pipeline

from skfusion.datasets import load_sample, load_sample_passages
from skfusion.embedder import ConcatEmbedder
from skfusion.evaluation import evaluate_retrieval
from skfusion.quantize import PercentileQuantizer
from skfusion.scoring import PseudoQueryScorer, RetrievalScorer


@pytest.fixture(scope="module")
def passages():
    return load_sample_passages(limit=800)


def _lexical(dim=48):
    return make_pipeline(
        TfidfVectorizer(sublinear_tf=True), TruncatedSVD(dim, random_state=0)
    )


def _characters(dim=8):
    # A real but weak member: character unigram statistics say little about topics.
    return make_pipeline(
        TfidfVectorizer(analyzer="char"), TruncatedSVD(dim, random_state=0)
    )


def test_make_pairs_splits_first_sentence_from_the_rest():
    passages = [
        "Vim is a text editor. It is upward compatible with vi. It has many features.",
        "One sentence only, nothing to pair.",
        "Git tracks content! The rest: four words.",  # rest of 4 words: skipped
        "Curl gets URLs? It speaks HTTP, FTP and more protocols than you need.",
        "Vim is a text editor. A repeated first sentence would make two right answers.",
    ]
    pairs = PseudoQueryScorer(min_words=5).make_pairs(passages)
    assert pairs.query_texts == ["Vim is a text editor.", "Curl gets URLs?"]
    assert pairs.corpus_texts == [
        "It is upward compatible with vi. It has many features.",
        "It speaks HTTP, FTP and more protocols than you need.",
    ]
    assert pairs.query_ids == ["q0", "q3"]
    assert pairs.corpus_ids == ["d0", "d3"]
    assert pairs.qrels == {"q0": {"d0": 1}, "q3": {"d3": 1}}


def test_max_passages_keeps_the_first_pairs(passages):
    full = PseudoQueryScorer().make_pairs(passages)
    few = PseudoQueryScorer(max_passages=50).make_pairs(passages)
    assert few.query_ids == full.query_ids[:50]
    assert few.corpus_texts == full.corpus_texts[:50]


def test_score_is_retrieval_of_the_pairs_through_the_whole_pipeline(passages):
    embed = ConcatEmbedder([("lsa", _lexical())]).fit(passages[:400])
    held_out = passages[400:]
    scorer = PseudoQueryScorer(metric="mrr@10")
    pairs = scorer.make_pairs(held_out)
    expected = evaluate_retrieval(Pipeline([("e", embed)]), pairs, metrics=("mrr@10",))
    score = scorer(Pipeline([("e", embed)]), held_out)
    assert score == expected["mrr@10"]
    assert 0.05 < score < 1.0  # chance is about 1 / 400
    # With a quantizer last, codes are searched with the similarity they imply.
    z = embed.transform(passages[:400])
    coded = Pipeline([("e", embed), ("q", PercentileQuantizer(bits=1).fit(z))])
    expected = evaluate_retrieval(coded, pairs, metrics=("mrr@10",))["mrr@10"]
    assert scorer(coded, held_out) == expected
    assert expected < score  # 1-bit codes lose some of the float ranking


def test_pseudo_queries_are_encoded_with_the_query_prompt(passages):
    # A query prompt of one frequent word pulls every pseudo-query towards the same
    # point, so only a scorer that encodes them as queries is hurt by it.
    noisy = {"lsa": {"query": "package " * 30, "document": ""}}
    plain = ConcatEmbedder([("lsa", _lexical())]).fit(passages[:400])
    prompted = ConcatEmbedder([("lsa", _lexical())], prompts=noisy).fit(passages[:400])
    scorer = PseudoQueryScorer()
    assert scorer(prompted, passages[400:]) < scorer(plain, passages[400:]) - 0.05


def test_grid_search_over_member_weights_without_labels(passages):
    # Character statistics help the word member up to a point (package names share
    # character patterns with their descriptions); too much weight drowns the words.
    embed = ConcatEmbedder([("words", _lexical()), ("chars", _characters(32))])
    grid = {"weights": [[1.0, w] for w in (0.25, 1.0, 2.0, 8.0)]}
    search = GridSearchCV(embed, grid, scoring=PseudoQueryScorer(), cv=2).fit(passages)
    scores = search.cv_results_["mean_test_score"]
    assert scores.max() - scores.min() > 0.02
    # The labelled dev queries (never seen by the label-free search) agree.
    labelled = GridSearchCV(
        embed, grid, scoring=RetrievalScorer(load_sample("dev")), cv=2
    ).fit(passages)
    assert search.best_params_ == labelled.best_params_
    assert search.best_params_["weights"] not in ([1.0, 0.25], [1.0, 8.0])


def test_distractors_join_the_searched_documents_unjudged():
    passages = [
        "Vim is a text editor. It is upward compatible with vi. It has many features.",
        "Curl gets URLs? It speaks HTTP, FTP and more protocols than you need.",
    ]
    distractors = [
        "Emacs is an extensible editor with a Lisp interpreter inside.",
        passages[1],  # a scored passage that is also in the corpus
        "It is upward compatible with vi. It has many features.",  # a pair's rest
        "Vim is a text editor.",  # a pair's pseudo-query
        "Wget downloads files over HTTP.",
    ]
    pairs = PseudoQueryScorer(distractors=distractors).make_pairs(passages)
    assert pairs.corpus_ids == ["d0", "d1", "x0", "x4"]
    assert pairs.corpus_texts[2:] == [distractors[0], distractors[4]]
    assert pairs.query_ids == ["q0", "q1"]
    assert pairs.qrels == {"q0": {"d0": 1}, "q1": {"d1": 1}}


def test_distractors_make_the_task_harder_and_are_scored_like_documents(passages):
    embed = ConcatEmbedder([("lsa", _lexical())]).fit(passages[:400])
    held_out, corpus = passages[400:600], load_sample().corpus_texts[:300]
    scorer = PseudoQueryScorer(metric="mrr@10", distractors=corpus)
    pairs = scorer.make_pairs(held_out)
    assert len(pairs.corpus_ids) == len(pairs.query_ids) + len(corpus)
    score = scorer(embed, held_out)
    expected = evaluate_retrieval(Pipeline([("e", embed)]), pairs, metrics=("mrr@10",))
    assert score == expected["mrr@10"]
    assert score < PseudoQueryScorer(metric="mrr@10")(embed, held_out)


def test_scorer_repr_and_pickle():
    scorer = PseudoQueryScorer("recall@100", min_words=3, max_passages=50)
    again = pickle.loads(pickle.dumps(scorer))
    assert (
        repr(again)
        == repr(scorer)
        == ("PseudoQueryScorer(metric='recall@100', min_words=3, max_passages=50)")
    )
    with_corpus = pickle.loads(pickle.dumps(PseudoQueryScorer(distractors=["a", "b"])))
    assert with_corpus.distractors == ["a", "b"]
    assert repr(with_corpus).endswith("max_passages=2000, distractors=<2 texts>)")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metric": "map@10"}, "metric='map@10' is not valid"),
        ({"metric": "ndcg@0"}, "metric='ndcg@0' is not valid"),
        ({"min_words": 0}, "min_words must be an integer >= 1"),
        ({"min_words": 2.5}, "min_words must be an integer >= 1"),
        ({"max_passages": 1}, "max_passages must be an integer >= 2"),
        ({"max_passages": True}, "max_passages must be an integer >= 2"),
    ],
)
def test_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PseudoQueryScorer(**kwargs)


@pytest.mark.parametrize(
    ("distractors", "error", "message"),
    [
        ("one text", ValueError, "distractors must be a collection of texts, got a single"),
        (5, TypeError, "distractors must be a list, tuple, .* got int"),
        (["a document", None], ValueError, r"distractors\[1\] is None"),
    ],
)
def test_bad_distractors(distractors, error, message):
    with pytest.raises(error, match=message):
        PseudoQueryScorer(distractors=distractors)


def test_bad_passages(passages):
    embed = ConcatEmbedder([("lsa", _lexical(8))]).fit(passages[:100])
    scorer = PseudoQueryScorer()
    with pytest.raises(TypeError, match="list of passages"):
        scorer(embed, "A single passage. Not a list of them at all.")
    with pytest.raises(TypeError, match="item 1 is int"):
        scorer.make_pairs(["A passage. With a rest of enough words here.", 3])
    one_sentence = ["Only one sentence here"] * 50
    with pytest.raises(ValueError, match=r"needs more than 10 passages .* gave 0"):
        scorer(embed, one_sentence)


def test_score_depends_on_the_weights_not_on_fold_order(passages):
    embed = ConcatEmbedder([("lsa", _lexical()), ("chars", _characters())])
    embed.fit(passages[:400])
    scorer = PseudoQueryScorer()
    a = scorer(embed, passages[400:])
    assert a == scorer(embed, list(passages[400:]))
    b = scorer(embed.set_params(weights=[1.0, 4.0]), passages[400:])
    assert not np.isclose(a, b)
