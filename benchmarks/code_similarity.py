"""Which similarity to use on percentile codes: symmetric vs asymmetric, weighted or not.

Real data: debian-packages (10k corpus, dev/test qrels) with the three-member 1,024-d
concatenation from ``benchmarks/_features.py``. The concatenation is reduced by PCA
(fitted on 10,000 unlabelled train passages) to 341 dimensions and quantized at 2 bits
(``PercentileQuantizer`` calibrated on the same train passages): 682 bits per vector,
48x smaller than the 1,024-d float32 concatenation. Every variant searches the corpus
codes with :func:`skfusion.search.search`:

- ``codes``: quantized queries against codes (centred codes, inner product);
- ``asymmetric``: float (PCA) queries against the centred codes;
- ``reconstruct``: float queries against the codes' bucket means (inverse_transform);

each with per-dimension weights ``spread_weights(quantizer, beta)`` (std_j ** beta),
beta in {0, 0.5, 1}. nDCG@10 on dev and test; "recovery" is nDCG@10 relative to exact
cosine search on the float32 1,024-d concatenation (and, in brackets, relative to the
float PCA-341 vectors). ``--grid`` also reports the beta chosen on dev, scored on test.

Run: ``python -m benchmarks.code_similarity [--quiet]`` (about a minute once the
features are cached). Writes ``benchmarks/results/code_similarity.{json,md}``.
"""

import numpy as np
from sklearn.decomposition import PCA
from tqdm import tqdm

from skfusion.quantize import PercentileQuantizer
from skfusion.search import spread_weights

from ._bench import Bench, arg_parser, write_results
from ._features import load_features

BETAS = (0.0, 0.5, 1.0)


def main(argv=None):
    p = arg_parser(__doc__)
    p.add_argument("--dim", type=int, default=341)
    p.add_argument("--bits", type=int, default=2)
    args = p.parse_args(argv)

    feats = load_features()
    bench = Bench.from_features(feats)

    def evaluate(queries, database, split, **kw):
        return float(bench.ndcg(split, queries, database, **kw))

    pca = PCA(args.dim, random_state=0).fit(feats["train"])
    H = {
        s: pca.transform(feats[s]).astype(np.float32)
        for s in ("train", "corpus", "queries")
    }
    quant = PercentileQuantizer(bits=args.bits, random_state=0).fit(H["train"])
    codes_c = quant.transform(H["corpus"])
    codes_q = quant.transform(H["queries"])
    splits = ("dev", "test")
    ref = {s: evaluate(feats["queries"], feats["corpus"], s) for s in splits}
    ref_pca = {s: evaluate(H["queries"], H["corpus"], s) for s in splits}

    variants = [(m, b) for m in ("codes", "asymmetric", "reconstruct") for b in BETAS]
    rows = []
    for metric, beta in tqdm(variants, disable=args.quiet, desc="variants"):
        q = codes_q if metric == "codes" else H["queries"]
        w = spread_weights(quant, beta) if beta else None
        nd = {
            s: evaluate(q, codes_c, s, metric=metric, quantizer=quant, weights=w)
            for s in splits
        }
        rows.append(
            {"metric": metric, "beta": beta, **{f"ndcg_{s}": nd[s] for s in splits}}
        )
    # Grid search: pick beta on dev per metric, report test.
    chosen = {}
    for metric in ("codes", "asymmetric", "reconstruct"):
        cand = [r for r in rows if r["metric"] == metric]
        best = max(cand, key=lambda r: r["ndcg_dev"])
        chosen[metric] = {"beta": best["beta"], "ndcg_test": best["ndcg_test"]}

    bits_per_vec = args.dim * args.bits
    out = {
        "dataset": "debian-packages",
        "pca_dim": args.dim,
        "bits": args.bits,
        "bytes_per_vector": -(-bits_per_vec // 8),
        "compression_vs_float32_concat": 1024 * 32 / bits_per_vec,
        "float_concat_ndcg": ref,
        "float_pca_ndcg": ref_pca,
        "variants": rows,
        "beta_chosen_on_dev": chosen,
    }
    lines = [
        f"# Similarity on percentile codes: debian-packages, PCA {args.dim}-d x "
        f"{args.bits} bits ({out['compression_vs_float32_concat']:.0f}x vs the 1,024-d "
        "float32 concatenation)",
        "",
        f"Float32 1,024-d concatenation (cosine): nDCG@10 dev {ref['dev']:.4f}, test "
        f"{ref['test']:.4f}. Float PCA-{args.dim} (cosine): dev {ref_pca['dev']:.4f}, "
        f"test {ref_pca['test']:.4f}.",
        "",
        "| metric | beta | nDCG@10 dev | nDCG@10 test | recovery test (vs PCA float) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['metric']} | {r['beta']:g} | {r['ndcg_dev']:.4f} | "
            f"{r['ndcg_test']:.4f} | {100 * r['ndcg_test'] / ref['test']:.1f}% "
            f"({100 * r['ndcg_test'] / ref_pca['test']:.1f}%) |"
        )
    lines += ["", "beta chosen on dev (grid {0, 0.5, 1}), scored on test:", ""]
    for m, c in chosen.items():
        lines.append(
            f"- {m}: beta={c['beta']:g}, test nDCG@10 {c['ndcg_test']:.4f} "
            f"({100 * c['ndcg_test'] / ref['test']:.1f}% of the float concatenation)"
        )
    write_results("code_similarity", out, lines, echo=True)


if __name__ == "__main__":
    main()
