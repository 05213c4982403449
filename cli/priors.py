"""`clipforge priors build`: a latent prior over a folder of a user's images, for a decoder that ships its encoder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cli.decoders import ProgressBars, add_run_options


def add_commands(groups: argparse._SubParsersAction) -> None:
    parser = groups.add_parser("priors", help="build latent priors for a decoder over your own images")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    build = commands.add_parser(
        "build",
        help="fit a kernel-density prior over the decoder's codes of a folder of images",
        description="Encode every image under --images (recursive) with the decoder's encoder and fit a kernel-density "
        "prior over the codes (one Gaussian per image, at most 8,192), stored beside the decoder (for a bundled decoder: "
        'in <cache>/decoders/DECODER/). A job uses it as "synthesis": {"decoder": DECODER, "prior": NAME}.',
    )
    build.add_argument("--decoder", required=True, help="a bundled or cached decoder's name, or a decoder folder's path")
    build.add_argument("--images", required=True, type=Path, help="folder of unlabelled images")
    build.add_argument("--name", required=True, help="the prior's name: lower-case letters, digits, '-' and '_'")
    add_run_options(build, replaces="a prior of that name")
    build.set_defaults(handler=run_build)


def run_build(args: argparse.Namespace) -> int:
    import torch

    from core.generators.priors import build_prior

    torch.set_num_threads(max(1, args.threads))
    bars = ProgressBars(args.quiet)
    try:
        card = build_prior(args.decoder, args.images, args.name, cache_dir=args.cache_dir, force=args.force, on_image=bars.on_image)
    finally:
        bars.close()
    if args.json:
        print(json.dumps(card, indent=2))
        return 0
    images = card["images"]
    used = f"{images['used']} of {images['count']} images"
    print(f"wrote prior {args.name!r} of decoder {args.decoder!r} ({card['kind']}; {used}) to {card['path']}")
    # A job finds a decoder's name in the default cache only (core.pipeline passes no cache directory); a path anywhere.
    decoder = args.decoder if args.cache_dir is None else card["decoder_path"]
    print(f'use it in a job as "synthesis": {{"decoder": "{decoder}", "prior": "{args.name}"}}')
    return 0
