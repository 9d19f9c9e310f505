"""The ``skfusion`` command."""

import argparse
import sys

__all__ = ["main"]


def _demo(args):
    from .demo import run_demo

    run_demo(cache_dir=args.cache_dir, quiet=args.quiet)
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="skfusion",
        description="Concatenate, compress and quantize small text-embedding models.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="the main job on the bundled sample and the offline MiniLM"
    )
    demo.add_argument("--cache-dir", default=None, help="embedding cache folder")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=_demo)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, ImportError) as exc:
        print(f"skfusion {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
