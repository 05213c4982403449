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
    create.add_argument("--teacher", default=None, help="have a worker embed the pool with this teacher now, ahead of its first job")
    create.add_argument("--views", type=int, default=None, help="with --teacher: augmented views per image (the jobs' pool_views)")
    create.add_argument("--json", action="store_true")
    listing = command("list", "your pools, newest first", run_list, pool=False)
    listing.add_argument("--json", action="store_true")
    show = command("show", "a pool's counts and the jobs using it", run_show)
    show.add_argument("--thumbnails", type=Path, default=None, help="also download its thumbnail grid (PNG) here")
    show.add_argument("--json", action="store_true")
    command("delete", "delete a pool and its images (refused while a queued or running job uses it)", run_delete)
    embed = commands.add_parser(
        "embed",
        help="embed a pool's images and views with a teacher ahead of its first job",
        description="The teacher's embeddings of every image of a pool and of its views (core.pools), made once and kept "
        "where jobs look for them: a folder's in the local bank folder (what `clipforge customize --pool DIR` reads), a "
        "service pool's (--service) in the service's storage. Every job on the pool and teacher then skips its teacher "
        "passes on the pool. Embeddings already made and whole are left as they are.",
    )
    embed.add_argument("pool", help="a folder of images, or with --service a service's pool id (pool_...)")
    embed.add_argument("--teacher", default=None, help="teacher name (default: shapes-mini)")
    embed.add_argument("--views", type=int, default=None, help="augmented views per image (default: the spec's, 4)")
    embed.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    embed.add_argument("--cache-dir", type=Path, default=None)
    where = embed.add_mutually_exclusive_group()
    where.add_argument("--bank-dir", type=Path, default=None, help="local folder (default: <cache>/banks, what customize uses)")
    where.add_argument("--service", action="store_true", help="the service's database and storage (CLIPFORGE_* or .env)")
    embed.add_argument("--quiet", action="store_true", help="no progress bar")
    embed.set_defaults(handler=run_embed)


def _client(args: argparse.Namespace):
    from client import ClipforgeClient

    return ClipforgeClient(args.url)


def _line(pool) -> str:
    using = f", used by {len(pool.jobs_using)} running job(s)" if pool.jobs_using else ""
    label = f" {pool.name!r}" if pool.name else ""
    return f"{pool.id}{label}: {pool.image_count} images, {pool.bytes / 1e6:.1f} MB{using}"


def _embedding_line(embedding) -> str:
    what = f"embedding {embedding.id} by {embedding.teacher} ({embedding.views} views): {embedding.status}"
    if embedding.result is not None:
        what += f", {embedding.result.status} in {embedding.result.seconds:.1f} s ({embedding.result.encoder})"
    if embedding.error is not None:
        what += f" [{embedding.error.code}] {embedding.error.message or ''}".rstrip()
    return what


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
        pool = client.create_pool(images=images, archive=args.archive, name=args.name, teacher=args.teacher, views=args.views)
    if args.json:
        print(pool.model_dump_json(indent=2))
        return 0
    duplicates = f" ({pool.duplicates} duplicates dropped)" if pool.duplicates else ""
    print(f"created {_line(pool)}{duplicates}")
    for embedding in pool.embeddings:
        print(f"queued {embedding.id}: a worker embeds it with {embedding.teacher} ({embedding.views} views); see `clipforge pools show`")
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
    for embedding in pool.embeddings:
        print(f"  {_embedding_line(embedding)}")
    return 0


def run_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.delete_pool(args.pool_id)
    print(f"deleted {args.pool_id}")
    return 0


def run_embed(args: argparse.Namespace) -> int:
    import sys

    from tqdm import tqdm

    from core.pipeline import embed_pool_ahead, resolved_spec, working_size
    from core.pools import MIN_POOL_IMAGES, PoolSource
    from core.spec import DEFAULT_TEACHER, CustomizeSpec, SynthesisSpec
    from core.stored import storage_object_store
    from core.teachers import create_teacher, default_cache_dir

    synthesis = SynthesisSpec(pool="pool_" + "0" * 26, **({"pool_views": args.views} if args.views else {}))
    spec = CustomizeSpec(teacher=args.teacher or DEFAULT_TEACHER, classes=["a", "b"], synthesis=synthesis, device=args.device)
    teacher = create_teacher(spec.teacher, device=spec.device, cache_dir=args.cache_dir)
    resolved = resolved_spec(spec, teacher)
    if args.service:
        from service.db import make_engine, make_session_factory
        from service.settings import get_settings
        from service.storage import create_storage
        from worker.runner import read_pool_source

        settings = get_settings()
        storage = create_storage(settings)
        with_pool = resolved.model_copy(update={"synthesis": resolved.synthesis.model_copy(update={"pool": args.pool})})
        factory = make_session_factory(make_engine(settings.database_url))
        source = read_pool_source(factory, storage, with_pool, teacher)
    else:
        from core.generators.image_folder import ImageFolderError
        from service.storage import LocalStorage

        storage = LocalStorage(args.bank_dir or (args.cache_dir or default_cache_dir()) / "banks")
        try:
            source = PoolSource.from_folder(args.pool, working_size(resolved, teacher))
        except ImageFolderError as exc:
            raise CliError(exc.code, str(exc)) from exc
    if source is None or len(source) < MIN_POOL_IMAGES:
        raise CliError("too_few_images", f"a pool needs at least {MIN_POOL_IMAGES} images")
    bar = tqdm(total=100, disable=args.quiet, desc="pool", file=sys.stderr)

    def on_step(done: int, total: int) -> None:
        bar.n = int(100 * done / total)
        bar.refresh()

    try:
        views = embed_pool_ahead(resolved, teacher, source, storage_object_store(storage), args.cache_dir or default_cache_dir(), on_step)
    finally:
        bar.close()
    print(json.dumps({**views.summary, "teacher": teacher.name}, indent=2))
    return 0
