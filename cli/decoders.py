"""`clipforge decoders train|pull|list`: latent decoders (the image prior of inversion) for a user's own domain."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cli.errors import CliError

IMAGE_SIZES = (16, 32, 64, 128)  # core.generators.training.IMAGE_SIZES, without importing torch to build the parser
# Measured: 6 steps of a 16 px decoder took 0.5 s on 1 thread and 4.6 s on 2 on a busy 2-core machine (threads spin
# against other processes); on an idle one 2 threads gain little on these small convolutions.
THREADS_HELP = "CPU threads for torch (default 1: as fast as more for small decoders, and robust to a busy CPU)"


def add_commands(groups: argparse._SubParsersAction) -> None:
    parser = groups.add_parser("decoders", help="train and list latent decoders (the image prior of synthesis)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="train a decoder (a small VAE) on a folder of unlabelled images",
        description="Train a decoder on every image under --images (recursive; png, jpg, jpeg, webp, bmp), with its "
        "encoder and a default latent prior over those images. A job then uses it as "
        '"synthesis": {"decoder": NAME}; `clipforge priors build` fits further priors for it.',
    )
    train.add_argument("--images", required=True, type=Path, help="folder of unlabelled images from your domain")
    train.add_argument("--out", required=True, help="a name (written to <cache>/decoders/NAME) or a folder's path (with a /)")
    train.add_argument("--steps", type=int, default=1800, help="optimiser steps, the budget (default 1800)")
    train.add_argument("--minutes", type=float, default=None, help="safety cap on training time (the card says which stopped it)")
    train.add_argument("--image-size", type=int, default=32, choices=IMAGE_SIZES, help="side of the square images it draws")
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--seed", type=int, default=0, help="initial weights, batch order and held-out images")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add_run_options(train, replaces="a decoder that already exists there")
    train.set_defaults(handler=run_train)

    pull = commands.add_parser(
        "pull",
        help="fetch a pretrained decoder of real images (diffusers) into the cache (needs internet)",
        description="Fetch a pretrained autoencoder from the Hugging Face hub into <cache>/decoders/NAME: taesd (TAESD, "
        "the default image prior for open_clip teachers) or movq (a VQGAN). It ships its encoder: build a prior for it "
        "over your own images with `clipforge priors build --decoder NAME --images DIR --name P`.",
    )
    pull.add_argument("name", help="taesd or movq")
    pull.add_argument("--image-size", type=int, default=224, help="the image side jobs decode at (default 224, ViT-B-32's input)")
    pull.add_argument("--cache-dir", type=Path, default=None, help="default ~/.cache/clipforge")
    pull.add_argument("--force", action="store_true", help="replace the decoder if it was pulled before")
    pull.set_defaults(handler=run_pull)

    listing = commands.add_parser("list", help="bundled and cached decoders, with their priors and cards' summary")
    listing.add_argument("--cache-dir", type=Path, default=None)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=run_list)


def add_run_options(parser: argparse.ArgumentParser, *, replaces: str) -> None:
    """The options `decoders train` and `priors build` share."""
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    parser.add_argument("--cache-dir", type=Path, default=None, help="default ~/.cache/clipforge")
    parser.add_argument("--force", action="store_true", help=f"replace {replaces}")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the card as JSON")


def output_folder(out: str, cache_dir: Path | None) -> Path:
    """``--out``: a path when it has a ``/``, else a name in ``<cache>/decoders``; a bundled name is taken."""
    from core.generators.decoder import DECODER_NAME_PATTERN, bundled_decoder_names, cache_decoders_dir, is_path_reference

    if is_path_reference(out):
        return Path(out).expanduser()
    if not DECODER_NAME_PATTERN.match(out):
        raise CliError("invalid_name", f"a decoder's name is letters, digits, '.', '-' and '_' (at most 100), not {out!r}")
    if out in bundled_decoder_names():
        raise CliError("decoder_exists", f"{out!r} is a bundled decoder; choose another name")
    return cache_decoders_dir(cache_dir) / out


class ProgressBars:
    """A progress bar on stderr per phase (images read, then training steps), each made when its phase starts."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar = None
        self.phase = ""

    def show(self, phase: str, done: int, total: int, postfix: str = "") -> None:
        if phase != self.phase:
            from tqdm import tqdm

            self.close()
            self.phase = phase
            bar_format = "{desc} {n_fmt}/{total_fmt}{postfix} |{bar}|"
            self.bar = tqdm(total=total, desc=phase, disable=self.quiet, file=sys.stderr, bar_format=bar_format)
        self.bar.set_postfix_str(postfix, refresh=False)
        self.bar.update(done - self.bar.n)

    def on_image(self, done: int, total: int) -> None:
        self.show("images", done, total)

    def on_step(self, progress) -> None:  # core.generators.training.TrainingProgress
        eta = "?" if progress.eta_seconds is None else f"{progress.eta_seconds:.0f}s"
        self.show("training", progress.step, progress.total_steps, f"loss {progress.loss:.4f}, ETA {eta}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_train(args: argparse.Namespace) -> int:
    import torch

    from core.devices import resolve_device
    from core.generators.decoder import is_path_reference
    from core.generators.training import TrainingConfig, train_decoder_on_folder

    out = output_folder(args.out, args.cache_dir)
    if min(args.steps, args.batch_size, args.threads) < 1 or (args.minutes is not None and args.minutes <= 0):
        raise CliError("invalid_argument", "--steps, --batch-size and --threads must be at least 1, and --minutes above 0")
    torch.set_num_threads(args.threads)
    config = TrainingConfig(steps=args.steps, minutes=args.minutes, batch_size=args.batch_size, seed=args.seed)
    bars = ProgressBars(args.quiet)
    try:
        card = train_decoder_on_folder(
            args.images,
            out,
            image_size=args.image_size,
            config=config,
            device=resolve_device(args.device),
            force=args.force,
            on_image=bars.on_image,
            on_progress=bars.on_step,
        )
    finally:
        bars.close()
    if args.json:
        print(json.dumps({"path": str(out), **card}, indent=2))
        return 0
    held_out = card["reconstruction"]["held_out"]
    training = card["training"]
    print(
        f"wrote decoder {card['decoder']!r} to {out}: {card['images']['count']} images, {training['steps_done']} steps "
        f"in {training['seconds']:.0f} s (stopped by {training['stopped_by']}), held-out L1 {held_out['l1']:.4f} "
        f"on {held_out['images']} images"
    )
    # A job finds a name in the default cache only (core.pipeline passes no cache directory); a path anywhere.
    reference = args.out if args.cache_dir is None and not is_path_reference(args.out) else str(out.resolve())
    print(f'use it in a job as "synthesis": {{"decoder": "{reference}"}}')
    return 0


def run_pull(args: argparse.Namespace) -> int:
    from core.generators.pull import pull_decoder

    if args.image_size < 8 or args.image_size % 8:
        raise CliError("invalid_argument", f"--image-size must be a positive multiple of 8, not {args.image_size}")
    folder = pull_decoder(args.name, cache_dir=args.cache_dir, image_size=args.image_size, force=args.force)
    print(f"pulled decoder {args.name!r} to {folder}")
    print(f"build its prior over your images: clipforge priors build --decoder {args.name} --images DIR --name fitted")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from core.generators.decoder import list_decoders

    infos = list_decoders(args.cache_dir)
    if args.json:
        print(json.dumps([asdict(info) for info in infos], indent=2))
        return 0
    for info in infos:
        encoder = "encoder" if info.has_encoder else "no encoder"
        print(f"{info.name:24s} {info.source:8s} {info.image_size:>4d} px  {encoder:10s}  priors: {', '.join(info.priors) or 'none'}")
        summary = info.summary
        if "images" in summary:
            print(f"    trained on {summary['images']} images under {summary.get('images_folder')}", end="")
        elif "data" in summary:
            print(f"    trained on {summary['data']}", end="")
        if "steps" in summary:
            print(f"; {summary['steps']} steps in {summary.get('seconds', 0):.0f} s", end="")
        if "held_out_l1" in summary:
            print(f"; held-out L1 {summary['held_out_l1']:.4f}", end="")
        print()
    return 0
