"""`clipforge bank build`: a teacher's sample bank (core.bank) made ahead of its first job, locally or in the service's
storage, so that no user's job waits for it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cli.customize import CliError


def add_commands(groups: argparse._SubParsersAction) -> None:
    parser = groups.add_parser("bank", help="build the sample bank jobs on a teacher share")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    build = commands.add_parser(
        "build",
        help="decode a teacher's prior samples and embed them with it, once for every later job",
        description="Decode --images prior samples of the teacher's decoder (or --decoder's) and keep them with the "
        "teacher's embeddings of each and of a few augmented views: jobs on this teacher, decoder and prior then choose "
        "their surrogate images and draw their fresh samples from it. A bank already built and whole is left as it is.",
    )
    build.add_argument("--teacher", default=None, help="teacher name (default: shapes-mini)")
    build.add_argument("--decoder", default=None, help="decoder (default: the teacher's paired one)")
    build.add_argument("--prior", default=None, help="the decoder's prior (default: its fitted one)")
    build.add_argument("--images", type=int, default=None, help="prior samples in the bank (default 16384; a service: its setting)")
    build.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    build.add_argument("--cache-dir", type=Path, default=None)
    where = build.add_mutually_exclusive_group()
    where.add_argument("--bank-dir", type=Path, default=None, help="local bank folder (default: <cache>/banks, what customize uses)")
    where.add_argument("--service", action="store_true", help="the service's storage (its settings: CLIPFORGE_* or .env)")
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    build.set_defaults(handler=run_build)


def run_build(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from core.bank import DEFAULT_BANK_IMAGES, bank_key, obtain_bank, storage_bank_store
    from core.distill import DISTILL_AUGMENT
    from core.pipeline import resolved_spec, synthesis_config
    from core.spec import DEFAULT_TEACHER, CustomizeSpec
    from core.teachers import create_teacher, default_cache_dir

    if args.service:
        from service.settings import get_settings
        from service.storage import create_storage

        settings = get_settings()
        storage, images = create_storage(settings), settings.sample_bank_images or DEFAULT_BANK_IMAGES
    else:
        from service.storage import LocalStorage

        storage = LocalStorage(args.bank_dir or (args.cache_dir or default_cache_dir()) / "banks")
        images = DEFAULT_BANK_IMAGES
    images = images if args.images is None else args.images
    if images < 1:
        raise CliError("invalid_spec", "--images must be at least 1")
    synthesis = {k: v for k, v in (("decoder", args.decoder), ("prior", args.prior)) if v is not None}
    # Two placeholder classes: a bank depends on the teacher, decoder and prior only, and the spec resolves them as a job's.
    spec = CustomizeSpec(teacher=args.teacher or DEFAULT_TEACHER, classes=["a", "b"], synthesis=synthesis, device=args.device)
    teacher = create_teacher(spec.teacher, device=spec.device, cache_dir=args.cache_dir)
    config = synthesis_config(resolved_spec(spec, teacher), teacher)
    key = bank_key(teacher, config, DISTILL_AUGMENT, images=images)
    if key is None:
        what = f"{spec.teacher!r} resolves to {config.generator!r}"
        raise CliError("invalid_spec", f"a bank serves the decoder generator with a named prior; {what}")
    bar = tqdm(total=100, disable=args.quiet, desc="bank", file=sys.stderr)

    def on_step(done: int, total: int) -> None:
        bar.n = int(100 * done / total)
        bar.refresh()

    try:
        outcome = obtain_bank(storage_bank_store(storage), teacher, config, key, on_step=on_step)
    finally:
        bar.close()
    print(json.dumps({**outcome.summary(), "storage_key": key.storage_key, "teacher": key.teacher_name, "decoder": key.decoder,
                      "prior": key.prior}, indent=2))  # fmt: skip
    return 0
