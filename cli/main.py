"""`clipforge` entry point: one argparse tree, one module per command group."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cli import banks, bench, customize, decoders, jobs, keys, pools, predict, priors, serve, teachers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipforge", description="Custom classifiers from CLIP without training data.")
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    teachers.add_commands(groups)
    customize.add_commands(groups)
    banks.add_commands(groups)
    predict.add_commands(groups)
    decoders.add_commands(groups)
    priors.add_commands(groups)
    bench.add_commands(groups)
    serve.add_commands(groups)
    jobs.add_commands(groups)
    pools.add_commands(groups)
    keys.add_commands(groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # every known error class carries a machine-readable code
        code = getattr(exc, "code", None)
        if code is None:
            raise
        print(f"error [{code}]: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
