"""The `ganops` command: `ganops generate` and `ganops serve` (inference only: no torch imported)."""
from __future__ import annotations

import argparse
import sys

from ganops import __version__


def _add_generate(sub) -> None:
    """`ganops generate`: images from seeds with an exported ONNX generator."""
    raise NotImplementedError  # filled in by the export/inference work


def _add_serve(sub) -> None:
    """`ganops serve`: the HTTP server over an exported ONNX generator."""
    raise NotImplementedError  # filled in by the server work


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ganops",
        description="Generate images with an exported ganops generator (ONNX Runtime, no PyTorch). "
        "The pipeline itself runs with `dvc repro`.",
    )
    parser.add_argument("--version", action="version", version=f"ganops {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_generate(sub)
    _add_serve(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
