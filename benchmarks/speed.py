"""Every speed ratio the issues ask for, side by side in one run.

Runs, one after the other on this machine, the speed benchmarks of each component, each
of which times skfusion and its named baseline in the same process:

- ``embedder_speed``: ConcatEmbedder vs the members' separate encode calls; warm cache.
- ``decoder_speed``: the Matryoshka loss step vs the naive per-stop loop.
- ``quantize_speed``: PercentileQuantizer vs sklearn KBinsDiscretizer.
- ``lsh_speed``: RandomProjectionLSH vs GaussianRandomProjection + sign + packbits and
  faiss IndexLSH.
- ``search_speed``: Hamming and float top-k vs faiss IndexBinaryFlat / IndexFlatIP.

Each runs as ``python -m benchmarks.<name>`` in a child process and writes its own
``results/<name>.{json,md}``; this script then gathers them into
``results/speed.{json,md}``. Ratios, not absolute times, are the claims: these machines
are shared and noisy. Usage: ``python -m benchmarks.speed [--quiet] [--only NAME ...]``.
"""

import json
import platform
import subprocess
import time

from ._bench import ROOT, arg_parser, module_command, results_path, write_results

BENCHMARKS = [
    "embedder_speed",
    "decoder_speed",
    "quantize_speed",
    "lsh_speed",
    "search_speed",
]


def main(argv=None):
    p = arg_parser(__doc__)
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, default=BENCHMARKS)
    args = p.parse_args(argv)
    gathered = {"machine": platform.platform(), "processor": platform.processor()}
    md = ["# Speed: every ratio, one run", ""]
    for name in args.only:
        start = time.perf_counter()
        cmd = [*module_command(f"benchmarks.{name}"), *(["--quiet"] if args.quiet else [])]
        subprocess.run(cmd, check=True, cwd=ROOT)
        gathered[name] = json.loads(results_path(f"{name}.json").read_text())
        gathered[name]["wall_seconds"] = time.perf_counter() - start
        md += [results_path(f"{name}.md").read_text().strip(), ""]
    write_results("speed", gathered, md)


if __name__ == "__main__":
    main()
