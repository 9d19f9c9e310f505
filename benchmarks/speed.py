"""Every speed ratio the issues ask for, side by side in one run.

Runs, one after the other on this machine, the speed benchmarks of each component, each
of which times skfusion and its named baseline in the same process:

- ``embedder_speed``: ConcatEmbedder vs the members' separate encode calls; warm cache.
- ``decoder_speed``: the Matryoshka loss step vs the naive per-stop loop.
- ``quantize_speed``: PercentileQuantizer vs sklearn KBinsDiscretizer.
- ``lsh_speed``: RandomProjectionLSH vs GaussianRandomProjection + sign + packbits and
  faiss IndexLSH.
- ``search_speed``: Hamming and float top-k vs faiss IndexBinaryFlat / IndexFlatIP.

Each writes its own ``results/<name>.{json,md}``; this script then gathers them into
``results/speed.{json,md}``. Ratios, not absolute times, are the claims: these machines
are shared and noisy. Usage: ``python benchmarks/speed.py [--quiet] [--only NAME ...]``.
"""

import argparse
import importlib
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _bench import RESULTS, write_results  # noqa: E402

BENCHMARKS = [
    "embedder_speed",
    "decoder_speed",
    "quantize_speed",
    "lsh_speed",
    "search_speed",
]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, default=BENCHMARKS)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    gathered = {"machine": platform.platform(), "processor": platform.processor()}
    md = ["# Speed: every ratio, one run", ""]
    for name in args.only:
        start = time.perf_counter()
        importlib.import_module(name).main(["--quiet"] if args.quiet else [])
        gathered[name] = json.loads((RESULTS / f"{name}.json").read_text())
        gathered[name]["wall_seconds"] = time.perf_counter() - start
        md += [(RESULTS / f"{name}.md").read_text().strip(), ""]
    write_results("speed", gathered, md)


if __name__ == "__main__":
    main()
