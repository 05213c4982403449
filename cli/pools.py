"""`clipforge pools create|list|show|delete`: your unlabelled images on a clipforge service, for jobs to distil on."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cli.errors import CliError
from cli.jobs import IMAGE_SUFFIXES, service_command


def add_commands(groups: argparse._SubParsersAction) -> None:
    parser = groups.add_parser("pools", help="image pools: your unlabelled images, for jobs to distil on")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, handler, pool: bool = True) -> argparse.ArgumentParser:
        return service_command(commands, name, help_text, handler, "pool_id" if pool else None)

    create = command("create", "upload a folder of images (searched recursively) and/or a zip as a pool", run_create, pool=False)
    create.add_argument("--images", type=Path, default=None, help="a folder of images from your domain, no labels needed")
    create.add_argument("--archive", type=Path, default=None, help="a zip of images, any folder layout")
    create.add_argument("--name", default=None, help="a label for the pool")
    create.add_argument("--json", action="store_true")
    listing = command("list", "your pools, newest first", run_list, pool=False)
    listing.add_argument("--json", action="store_true")
    show = command("show", "a pool's counts and the jobs using it", run_show)
    show.add_argument("--thumbnails", type=Path, default=None, help="also download its thumbnail grid (PNG) here")
    show.add_argument("--json", action="store_true")
    command("delete", "delete a pool and its images (refused while a queued or running job uses it)", run_delete)


def _client(args: argparse.Namespace):
    from client import ClipforgeClient

    return ClipforgeClient(args.url)


def _line(pool) -> str:
    using = f", used by {len(pool.jobs_using)} running job(s)" if pool.jobs_using else ""
    label = f" {pool.name!r}" if pool.name else ""
    return f"{pool.id}{label}: {pool.image_count} images, {pool.bytes / 1e6:.1f} MB{using}"


def folder_images(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not files:
        raise CliError("invalid_images", f"no image files under {folder}")
    return files


def run_create(args: argparse.Namespace) -> int:
    if args.images is None and args.archive is None:
        raise CliError("no_images", "give --images DIR and/or --archive ZIP")
    images = folder_images(args.images) if args.images is not None else []
    with _client(args) as client:
        pool = client.create_pool(images=images, archive=args.archive, name=args.name)
    if args.json:
        print(pool.model_dump_json(indent=2))
        return 0
    duplicates = f" ({pool.duplicates} duplicates dropped)" if pool.duplicates else ""
    print(f"created {_line(pool)}{duplicates}")
    print(f'use it in a job as "synthesis": {{"pool": "{pool.id}"}}')
    return 0


def run_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        pools = client.pools().data
    if args.json:
        print(json.dumps([p.model_dump(mode="json") for p in pools], indent=2))
        return 0
    for pool in pools:
        print(_line(pool))
    return 0


def run_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        pool = client.get_pool(args.pool_id)
        if args.thumbnails is not None:
            client.download_pool_thumbnails(args.pool_id, args.thumbnails)
    if args.json:
        print(pool.model_dump_json(indent=2))
        return 0
    print(_line(pool))
    for job_id in pool.jobs_using:
        print(f"  used by {job_id}")
    return 0


def run_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.delete_pool(args.pool_id)
    print(f"deleted {args.pool_id}")
    return 0
