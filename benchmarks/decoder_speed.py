"""Training speed of the Matryoshka loss: efficient implementation vs the naive one.

Setting from issue 3: inputs 1,152-d (random, L2-normalised), the paper's 9 stops,
768 outputs, batch 1,024; one epoch of 500,000 rows is 489 batches. On a small CPU a
full epoch per variant takes minutes, so by default the script times ``--batches``
training steps of each variant on the same batches (interleaved, so machine load hits
both alike) and extrapolates to the epoch; ``--batches 489`` runs the full epoch.

A step is: linear layer forward, loss, backward, AdamW step. The naive loss
re-normalises every prefix and builds full ``B x B`` cosine matrices (inputs and
outputs) for every stop; the efficient one computes the target Gram once, prefix norms
from a cumulative sum and the prefix Grams incrementally, with an analytic backward.
Both see the same weights at every step, and their loss values are compared.

Writes ``benchmarks/results/decoder_speed[_TAG].{json,md}``. The committed results:
``decoder_speed`` (paper loss, CPU, 1 thread), ``decoder_speed_kl`` (listwise loss,
CPU, 1 thread), ``decoder_speed_cuda`` (paper loss, H100, full epoch; measured with
the previous version of the efficient loss, which kept the per-stop matrices for an
analytic backward pass instead of computing the gradient in the forward pass).

    python -m benchmarks.decoder_speed [--batches 12] [--threads N] [--device cpu]
        [--loss pairwise_mse|listwise_kl] [--tag NAME]
"""

import argparse
import platform
import time

import numpy as np
import torch
from tqdm import tqdm

from skfusion._losses import (
    cosine_gram,
    matryoshka_listwise_kl,
    matryoshka_listwise_kl_naive,
    matryoshka_pairwise_mse,
    matryoshka_pairwise_mse_naive,
)

from ._bench import write_results

STOPS = (32, 64, 128, 200, 256, 300, 384, 512, 768)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--dim", type=int, default=1152)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--batches", type=int, default=12, help="timed steps per variant")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--loss",
        choices=["pairwise_mse", "listwise_kl"],
        default="pairwise_mse",
        help="the paper's loss (the issue's target) or the library default",
    )
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--tag", default="", help="suffix for the result file names")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(args.dim, STOPS[-1]).to(device)
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-4)
    n_epoch_batches = -(-args.rows // args.batch_size)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step(kind, Z):
        sync()
        t = time.perf_counter()
        H = layer(Z)
        if args.loss == "listwise_kl":
            # Both share the target; the naive one re-normalises every prefix and
            # differentiates through full cosine matrices with autograd.
            fn = (
                matryoshka_listwise_kl
                if kind == "efficient"
                else (matryoshka_listwise_kl_naive)
            )
            loss = fn(H, cosine_gram(Z), STOPS, 0.02)
        elif kind == "efficient":
            loss = matryoshka_pairwise_mse(H, cosine_gram(Z), STOPS)
        else:
            loss = matryoshka_pairwise_mse_naive(H, Z, STOPS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync()
        elapsed = time.perf_counter() - t
        return elapsed, float(loss.detach()), [p.grad.clone() for p in layer.parameters()]

    times = {"efficient": [], "naive": []}
    max_loss_diff = max_grad_diff = 0.0
    warmup = 1
    for i in tqdm(range(args.batches + warmup), disable=args.quiet, desc="steps"):
        Z = torch.randn(args.batch_size, args.dim, generator=gen)
        Z = (Z / Z.norm(dim=1, keepdim=True)).to(device)
        order = ("efficient", "naive") if i % 2 == 0 else ("naive", "efficient")
        out = {kind: step(kind, Z) for kind in order}
        max_loss_diff = max(max_loss_diff, abs(out["efficient"][1] - out["naive"][1]))
        for ge, gn in zip(out["efficient"][2], out["naive"][2], strict=True):
            max_grad_diff = max(max_grad_diff, float((ge - gn).abs().max()))
        # Optimizer step with the efficient gradients (both variants were evaluated at
        # the same weights).
        for p, g in zip(layer.parameters(), out["efficient"][2], strict=True):
            p.grad = g
        opt.step()
        if i >= warmup:
            for kind in times:
                times[kind].append(out[kind][0])
        if not args.quiet:
            diff = abs(out["efficient"][1] - out["naive"][1])
            tqdm.write(
                f"step {i}: efficient {out['efficient'][0]:.3f}s, naive "
                f"{out['naive'][0]:.3f}s, loss diff {diff:.2e}"
            )

    summary = {}
    for kind, ts in times.items():
        med = float(np.median(ts))
        summary[kind] = {
            "median_step_s": med,
            "mean_step_s": float(np.mean(ts)),
            "epoch_s_extrapolated": med * n_epoch_batches,
        }
    ratio = summary["naive"]["median_step_s"] / summary["efficient"]["median_step_s"]
    result = {
        "setting": {
            "rows": args.rows,
            "dim": args.dim,
            "n_components": STOPS[-1],
            "stops": list(STOPS),
            "batch_size": args.batch_size,
            "loss": args.loss,
            "batches_per_epoch": n_epoch_batches,
            "timed_batches": args.batches,
            "device": str(device),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
        },
        "efficient": summary["efficient"],
        "naive": summary["naive"],
        "speedup_median": ratio,
        "max_abs_loss_diff": max_loss_diff,
        "max_abs_grad_diff": max_grad_diff,
        "losses_agree_1e-5": max_loss_diff <= 1e-5,
    }
    stem = "decoder_speed" + (f"_{args.tag}" if args.tag else "")
    s = result["setting"]
    md = [
        f"# Decoder training speed, {s['loss']} ({s['device']}, "
        f"{s['torch_threads']} torch threads)",
        "",
        f"{s['dim']}-d inputs, {s['n_components']} outputs, stops {s['stops']}, batch "
        f"{s['batch_size']}; one epoch of {s['rows']:,} rows = {n_epoch_batches} steps. "
        f"Median of {args.batches} timed steps per variant (forward, loss, backward), "
        "same batches and weights for both, interleaved; epoch time = median step x "
        "steps per epoch (extrapolated"
        + (")." if args.batches < n_epoch_batches else ", full epoch timed)."),
        "",
        "| implementation | median step (s) | epoch (s) | speed-up |",
        "|---|---|---|---|",
        f"| naive (per-stop renormalise, full cosine matrices, autograd) | "
        f"{summary['naive']['median_step_s']:.3f} | "
        f"{summary['naive']['epoch_s_extrapolated']:.0f} | 1.0x |",
        f"| efficient (skfusion._losses) | {summary['efficient']['median_step_s']:.3f}"
        f" | {summary['efficient']['epoch_s_extrapolated']:.0f} | {ratio:.2f}x |",
        "",
        f"Largest loss difference between the two: {max_loss_diff:.2e} (target 1e-5); "
        f"largest gradient difference: {max_grad_diff:.2e}.",
        "",
    ]
    write_results(f"{stem}", result, md, echo=True)


if __name__ == "__main__":
    main()
