"""`clipforge customize`: run the engine locally and write the artifacts to a folder."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from pydantic import ValidationError

from cli.errors import CliError


class InvalidSpecError(CliError):
    def __init__(self, message: str) -> None:
        super().__init__("invalid_spec", message)


def add_commands(groups: argparse._SubParsersAction) -> None:
    parser = groups.add_parser("customize", help="synthesize, distil and export a student on this machine")
    parser.add_argument("--teacher", default=None, help="teacher name (default: the spec's, else the service's default, shapes-mini)")
    parser.add_argument("--classes", default=None, help="comma-separated class names")
    parser.add_argument("--images", action="append", default=[], metavar="CLASS=DIR", help="example images for a class (repeatable)")
    parser.add_argument("--config", type=Path, default=None, help="a JSON spec; flags override its fields")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument(
        "--pool",
        type=Path,
        default=None,
        metavar="DIR",
        help="unlabelled images of your domain (searched recursively): distilled on beside the synthesized images, a "
        "tenth held out to measure the student's agreement with the teacher (a service's image pool, locally)",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the artifacts")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_bank_arguments(parser)
    parser.add_argument(
        "--no-time-limit", action="store_true", help="run a CPU job even when its estimate is over an hour (refused by default)"
    )
    parser.set_defaults(handler=run_customize)


def add_bank_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bank-dir",
        type=Path,
        default=None,
        help="where sample banks are kept (default: <cache>/banks): built by a teacher's first job, reused by the next ones",
    )
    parser.add_argument("--no-bank", action="store_true", help="draw and score new prior samples instead of a sample bank's")
    parser.add_argument("--bank-images", type=int, default=None, help="prior samples in a bank built now (default 16384)")


def bank_request(args: argparse.Namespace):
    """The sample bank request of the CLI's flags (core.pipeline.BankRequest), None with --no-bank."""
    from core.bank import DEFAULT_BANK_IMAGES, storage_bank_store
    from core.pipeline import BankRequest
    from core.teachers import default_cache_dir
    from service.storage import LocalStorage

    if args.no_bank:
        return None
    images = DEFAULT_BANK_IMAGES if args.bank_images is None else args.bank_images
    if images < 1:
        raise CliError("invalid_spec", "--bank-images must be at least 1")
    folder = args.bank_dir or (getattr(args, "cache_dir", None) or default_cache_dir()) / "banks"
    return BankRequest(storage_bank_store(LocalStorage(folder)), images)


def build_spec(args: argparse.Namespace):
    from core.spec import DEFAULT_TEACHER, CustomizeSpec

    raw: dict = {}
    if args.config is not None:
        try:
            raw = json.loads(args.config.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InvalidSpecError(f"cannot read spec {args.config}: {exc}") from exc
    if args.teacher or raw.get("teacher") is None:
        raw["teacher"] = args.teacher or DEFAULT_TEACHER  # a spec's None: the default teacher, as the service's
    if args.classes:
        raw["classes"] = [{"name": name.strip()} for name in args.classes.split(",")]
    if args.seed is not None:
        raw["seed"] = args.seed
    if args.device:
        raw["device"] = args.device
    classes = [c if isinstance(c, dict) else {"name": c} for c in raw.get("classes", [])]
    for item in args.images:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise InvalidSpecError(f"--images takes CLASS=DIR, not {item!r}")
        match = next((c for c in classes if c["name"] == name), None)
        if match is None:
            match = {"name": name}
            classes.append(match)
        match["images"] = [*match.get("images", []), folder]
    raw["classes"] = classes
    if args.pool is not None:  # named by its content once read (local_pool_id); a placeholder until then
        raw["synthesis"] = {**raw.get("synthesis", {}), "pool": LOCAL_POOL_PLACEHOLDER}
    elif (raw.get("synthesis") or {}).get("pool"):
        raise InvalidSpecError("synthesis.pool names a service's image pool; on this machine give its images with --pool DIR")
    try:
        return CustomizeSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in exc.errors())
        raise InvalidSpecError(problems) from None


LOCAL_POOL_PLACEHOLDER = "pool_" + "0" * 26


def local_pool_id(content_sha256: str) -> str:
    """A folder's pool id on this machine: its content's digest, in the form of a service's pool id."""
    return "pool_" + content_sha256[:26]


def read_pool_folder(spec, folder: Path, size: int):
    """The spec naming the folder's pool, and its images (core.pools.PoolSource) kept at ``size``: each file is decoded
    again at the teacher's size only while the pool's embeddings are built (the first job on it)."""
    from core.generators.image_folder import ImageFolderError
    from core.pools import MIN_POOL_IMAGES, PoolSource

    try:
        source = PoolSource.from_folder(folder, size)
    except ImageFolderError as exc:  # no images, or one Pillow cannot decode
        raise CliError(exc.code, str(exc)) from exc
    if len(source) < MIN_POOL_IMAGES:  # the job's held-out split needs them (core.pools.split_indices)
        raise CliError(
            "too_few_images", f"a pool needs at least {MIN_POOL_IMAGES} images (to distil on and to hold out): {folder} has {len(source)}"
        )
    synthesis = spec.synthesis.model_copy(update={"pool": local_pool_id(source.content_sha256)})
    return spec.model_copy(update={"synthesis": synthesis}), source


def write_artifacts(artifacts: dict[str, bytes], out: Path) -> None:
    """Each file appears whole or not at all: written to a temporary name, then renamed."""
    out.mkdir(parents=True, exist_ok=True)
    for name, content in artifacts.items():
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
            os.replace(tmp, out / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def run_customize(args: argparse.Namespace) -> int:
    spec = build_spec(args)
    import torch
    from tqdm import tqdm

    from core.images import load_folder
    from core.pipeline import customize
    from core.spec import with_image_prior
    from core.teachers import create_teacher
    from core.teachers.sources import teacher_facts

    if (facts := teacher_facts(spec.teacher, args.cache_dir)) is not None:
        with_image_prior(spec.synthesis, facts)  # a spec refused for its teacher is refused before the weights load
    teacher = create_teacher(spec.teacher, device=spec.device, cache_dir=args.cache_dir)
    try:
        examples = {c.name: torch.cat([load_folder(folder, teacher.image_size) for folder in c.images]) for c in spec.classes if c.images}
    except (OSError, ValueError) as exc:  # a missing folder, no images in it, or an undecodable file
        raise CliError("invalid_images", str(exc)) from exc
    pool = None
    if args.pool is not None:
        from core.pipeline import resolved_spec, working_size

        spec, pool = read_pool_folder(spec, args.pool, working_size(resolved_spec(spec, teacher), teacher))
    bar = tqdm(total=100, disable=args.quiet, bar_format="{desc:<14}{percentage:3.0f}%|{bar}| {postfix}", file=sys.stderr)

    shown: dict[str, object] = {}

    def show(progress) -> None:
        # Redraw only when the stage or the whole percent changes: logs stay short off a terminal.
        percent = int(100 * progress.fraction)
        if shown.get("stage") == progress.stage and shown.get("percent") == percent:
            return
        shown.update(stage=progress.stage, percent=percent)
        bar.set_description_str(progress.stage)
        bar.n = percent
        eta = "?" if progress.eta_seconds is None else f"{progress.eta_seconds:.0f}s"
        bar.set_postfix_str(f"ETA {eta}", refresh=False)
        bar.refresh()

    try:
        from core.pipeline import CPU_JOB_MAX_SECONDS
        from core.teachers import default_cache_dir

        tower_dir = args.cache_dir or default_cache_dir()  # a large teacher's onnxruntime towers, beside its weights
        result = customize(spec, teacher, examples=examples, on_progress=show, pool=pool, bank=bank_request(args), tower_dir=tower_dir,
                           max_cpu_seconds=None if args.no_time_limit else CPU_JOB_MAX_SECONDS)  # fmt: skip
    finally:
        bar.close()
    write_artifacts(result.artifacts, args.out)
    print(f"wrote {', '.join(sorted(result.artifacts))} to {args.out}")
    for warning in result.metrics.get("warnings") or []:
        print(f"warning: {warning}", file=sys.stderr)
    return 0
