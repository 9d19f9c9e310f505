"""Speed of RandomProjectionLSH.transform against sklearn and faiss sign-bit hashing.

Side by side in one process on the same float32 matrix (default 200,000 x 1,152 ->
1,024 bits, as in issue 4); best of ``--repeats`` runs:

- skfusion ``RandomProjectionLSH(n_bits=1024, pack=True).transform``;
- sklearn ``GaussianRandomProjection(1024).transform`` + ``> 0`` + ``np.packbits``;
- faiss ``IndexLSH(d, 1024, rotate_data=True).sa_encode`` (when faiss is installed).

All three are one float32 matrix product plus a sign; the table shows what the blocking
and the packing cost on top of it.

Run: ``python -m benchmarks.lsh_speed [--rows 200000 --dim 1152 --bits 1024 --quiet]``.
Writes ``benchmarks/results/lsh_speed.{json,md}``.
"""

import os

import numpy as np
from sklearn.random_projection import GaussianRandomProjection
from tqdm import tqdm

from skfusion.lsh import RandomProjectionLSH

from ._bench import arg_parser, best_time, write_results


def main(argv=None):
    p = arg_parser(__doc__, repeats=3)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=1152)
    p.add_argument("--bits", type=int, default=1024)
    args = p.parse_args(argv)

    X = np.random.default_rng(0).standard_normal((args.rows, args.dim), dtype=np.float32)
    ours = RandomProjectionLSH(args.bits, random_state=0).fit(X[:10])
    grp = GaussianRandomProjection(args.bits, random_state=0).fit(X[:10])
    methods = {
        "skfusion RandomProjectionLSH": lambda: ours.transform(X),
        "sklearn GaussianRandomProjection + sign + packbits": lambda: np.packbits(
            grp.transform(X) > 0, axis=1
        ),
    }
    try:
        import faiss

        index = faiss.IndexLSH(args.dim, args.bits, True, False)
        index.train(X[:1000])
        methods["faiss IndexLSH.sa_encode"] = lambda: index.sa_encode(X)
    except ImportError:
        pass
    times = {}
    for name, fn in tqdm(methods.items(), disable=args.quiet, desc="methods"):
        times[name] = best_time(fn, args.repeats)[0]
    base = times["skfusion RandomProjectionLSH"]
    flops = 2.0 * args.rows * args.dim * args.bits
    out = {
        "shape": [args.rows, args.dim],
        "n_bits": args.bits,
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "seconds": times,
        "ratio_vs_skfusion": {k: v / base for k, v in times.items()},
        "skfusion_gflops": flops / base / 1e9,
    }
    lines = [
        f"# Sign-bit hashing, {args.rows:,} x {args.dim} float32 -> {args.bits} bits "
        f"(best of {args.repeats}, {os.cpu_count()} shared CPUs)",
        "",
        "| method | seconds | time / skfusion |",
        "|---|---:|---:|",
    ]
    for name, t in times.items():
        lines.append(f"| {name} | {t:.2f} | {t / base:.2f} |")
    lines += [
        "",
        f"skfusion reaches {flops / base / 1e9:.0f} GFLOP/s in the projection "
        "(float32 matrix product, the whole cost).",
    ]
    write_results("lsh_speed", out, lines, echo=True)


if __name__ == "__main__":
    main()
