"""`clipforge jobs submit|list|status|wait|events|cancel|download|delete|evaluate`: the service's client on the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cli.errors import CliError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def service_command(
    commands: argparse._SubParsersAction, name: str, help_text: str, handler, resource: str | None
) -> argparse.ArgumentParser:
    """A command that talks to a service: ``--url``, and the id of the resource it acts on (``resource``: its name)."""
    from client import default_url

    sub = commands.add_parser(name, help=help_text)
    sub.add_argument("--url", default=default_url(), help="service URL (CLIPFORGE_URL, default http://127.0.0.1:8000)")
    if resource is not None:
        sub.add_argument(resource)
    sub.set_defaults(handler=handler)
    return sub


def add_commands(groups: argparse._SubParsersAction) -> None:
    parser = groups.add_parser("jobs", help="submit and follow jobs on a clipforge service")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, handler, job: bool = True) -> argparse.ArgumentParser:
        return service_command(commands, name, help_text, handler, "job_id" if job else None)

    submit = command("submit", "submit a job (text classes, or example images per class)", run_submit, job=False)
    submit.add_argument("--classes", default=None, help="comma-separated class names")
    submit.add_argument("--config", type=Path, default=None, help="a JSON spec; flags override its fields")
    submit.add_argument("--images", action="append", default=[], metavar="CLASS=DIR", help="example images for a class (repeatable)")
    submit.add_argument("--teacher", default=None)
    submit.add_argument("--seed", type=int, default=None)
    submit.add_argument("--idempotency-key", default=None)
    submit.add_argument("--wait", action="store_true", help="then wait for it with a progress bar")
    submit.add_argument("--json", action="store_true")

    listing = command("list", "list jobs, newest first", run_list, job=False)
    listing.add_argument("--status", default=None)
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--after", default=None, help="the last job id of the previous page")
    listing.add_argument("--json", action="store_true")

    status = command("status", "a job's status", run_status)
    status.add_argument("--json", action="store_true")

    wait = command("wait", "wait for a job with a progress bar; non-zero exit when it fails or is cancelled", run_wait)
    wait.add_argument("--timeout", type=float, default=None)
    wait.add_argument("--quiet", action="store_true")

    events = command("events", "a job's events", run_events)
    events.add_argument("--after", type=int, default=None)
    events.add_argument("--follow", action="store_true", help="keep printing until the job ends")
    events.add_argument("--json", action="store_true")

    command("cancel", "cancel a job (idempotent)", run_cancel)

    download = command("download", "download a job's artifacts (checksums verified)", run_download)
    download.add_argument("--out", type=Path, required=True, help="folder for the files")
    download.add_argument("--name", action="append", default=None, help="one artifact (repeatable); default: all")

    command("delete", "delete a finished or queued job and its files", run_delete)

    evaluate = command("evaluate", "score a succeeded job's student and teacher on your labelled images", run_evaluate)
    evaluate.add_argument("--images", action="append", default=[], metavar="CLASS=DIR", help="labelled images of a class (repeatable)")
    evaluate.add_argument("--archive", type=Path, default=None, help="a zip with one folder of images per class")
    evaluate.add_argument("--out", type=Path, default=None, help="also download confusion.png, mistakes.png and evaluation.json here")
    evaluate.add_argument("--timeout", type=float, default=None)
    evaluate.add_argument("--json", action="store_true")


def _client(args: argparse.Namespace):
    from client import ClipforgeClient

    return ClipforgeClient(args.url)


def build_request(args: argparse.Namespace) -> tuple[dict, dict[str, list[Path]]]:
    raw: dict = {}
    if args.config is not None:
        try:
            raw = json.loads(args.config.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CliError("invalid_spec", f"cannot read spec {args.config}: {exc}") from exc
    if args.teacher:
        raw["teacher"] = args.teacher
    if args.classes:
        raw["classes"] = [name.strip() for name in args.classes.split(",")]
    if args.seed is not None:
        raw["seed"] = args.seed
    raw.pop("device", None)  # the worker's --device decides where a job runs
    images = images_by_class(args.images, error_code="invalid_spec")
    for name in images:
        names = [c if isinstance(c, str) else c.get("name") for c in raw.get("classes", [])]
        if name not in names:
            raw.setdefault("classes", []).append(name)
    return raw, images


def _job_line(job) -> str:
    progress = f"{job.progress * 100:5.1f}%"
    stage = job.stage or "-"
    error = f"  [{job.error.code}] {job.error.message}" if job.error else ""
    return f"{job.id}  {job.status:10s} {stage:12s} {progress}  {job.created_at:%Y-%m-%d %H:%M:%S}{error}"


def run_submit(args: argparse.Namespace) -> int:
    raw, images = build_request(args)
    with _client(args) as client:
        job = client.submit(raw, images=images or None, idempotency_key=args.idempotency_key)
        if args.json:
            print(job.model_dump_json(indent=2))
        else:
            print(job.id)
        if args.wait:
            return wait_for(client, job.id, timeout=None, quiet=False)
    return 0


def run_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        page = client.list_jobs(status=args.status, after=args.after, limit=args.limit)
    if args.json:
        print(page.model_dump_json(indent=2))
        return 0
    for job in page.data:
        print(_job_line(job))
    if page.has_more:
        print(f"more: --after {page.next_after}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.get_job(args.job_id)
    print(job.model_dump_json(indent=2) if args.json else _job_line(job))
    return 0


def wait_for(client, job_id: str, *, timeout: float | None, quiet: bool) -> int:
    """A live bar until the job ends (client.progress.follow); 0 when it succeeded, 1 when it failed or was cancelled."""
    from client.progress import follow

    job = follow(client, job_id, timeout=timeout, quiet=quiet)
    if job.status == "succeeded":
        print(f"job {job.id} succeeded")
        return 0
    detail = f": [{job.error.code}] {job.error.message}" if job.error else ""
    print(f"job {job.id} {job.status}{detail}", file=sys.stderr)
    return 1


def run_wait(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return wait_for(client, args.job_id, timeout=args.timeout, quiet=args.quiet)


def run_events(args: argparse.Namespace) -> int:
    with _client(args) as client:
        # --follow: the live stream (Server-Sent Events) until the job ends; else the events recorded so far.
        events = client.follow_events(args.job_id, after=args.after) if args.follow else client.iter_events(args.job_id, after=args.after)
        for event in events:
            if args.json:
                print(event.model_dump_json(), flush=True)
            else:
                progress = "" if event.progress is None else f" {event.progress * 100:5.1f}%"
                detail = f" {json.dumps(event.data)}" if event.data else ""
                print(f"{event.id:6d} {event.created_at:%H:%M:%S} {event.kind:8s} {event.stage or event.status or ''}{progress} "
                      f"{event.message or ''}{detail}", flush=True)  # fmt: skip
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.cancel(args.job_id)
    print(f"{job.id} {job.status}")
    return 0


def run_download(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    with _client(args) as client:
        names = args.name or [a.name for a in client.artifacts(args.job_id).data]
        if not names:
            raise CliError("no_artifacts", f"job {args.job_id} has no artifacts (yet)")
        for name in names:
            print(client.download(args.job_id, name, args.out / name))
    return 0


def images_by_class(items: list[str], error_code: str = "invalid_images") -> dict[str, list[Path]]:
    """The image files of each ``--images CLASS=DIR`` (sorted by name); ``error_code`` for a malformed item."""
    images: dict[str, list[Path]] = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise CliError(error_code, f"--images takes CLASS=DIR, not {item!r}")
        files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if Path(folder).is_dir() else []
        if not files:
            raise CliError("invalid_images", f"no image files in {folder}")
        images.setdefault(name, []).extend(files)
    return images


def evaluation_table(evaluation) -> str:
    """Accuracy per class of the student and the teacher, then the totals."""
    result = evaluation.result
    width = max([len("class"), *(len(name) for name in result.classes)])
    lines = [f"{'class':{width}s}  {'images':>6s}  {'student':>7s}  {'teacher':>7s}"]
    for name in result.classes:
        count = evaluation.counts.get(name, 0)
        student, teacher = result.student.per_class.get(name), result.teacher.per_class.get(name)
        cells = [f"{v:7.3f}" if v is not None else f"{'-':>7s}" for v in (student, teacher)]
        lines.append(f"{name:{width}s}  {count:6d}  {cells[0]}  {cells[1]}")
    lines.append(f"{'all':{width}s}  {result.images:6d}  {result.student.accuracy:7.3f}  {result.teacher.accuracy:7.3f}")
    lines.append(f"student agrees with the teacher on {result.agreement:.1%} of the images; {result.student_mistakes} student mistakes")
    return "\n".join(lines)


def run_evaluate(args: argparse.Namespace) -> int:
    images = images_by_class(args.images)
    if not images and args.archive is None:
        raise CliError("invalid_images", "pass --images CLASS=DIR (repeatable) or --archive ZIP")
    with _client(args) as client:
        evaluation = client.evaluate(args.job_id, images=images, archive=args.archive)
        print(f"evaluation {evaluation.id}: {sum(evaluation.counts.values())} images, {evaluation.status}", file=sys.stderr)
        evaluation = client.wait_evaluation(args.job_id, evaluation.id, timeout=args.timeout)
        if evaluation.status != "succeeded":
            detail = f": [{evaluation.error.code}] {evaluation.error.message}" if evaluation.error else ""
            print(f"evaluation {evaluation.id} {evaluation.status}{detail}", file=sys.stderr)
            return 1
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            for artifact in evaluation.artifacts:
                saved = client.download_evaluation_artifact(args.job_id, evaluation.id, artifact.name, args.out / artifact.name)
                print(saved, file=sys.stderr)
    print(evaluation.model_dump_json(indent=2) if args.json else evaluation_table(evaluation))
    return 0


def run_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.delete(args.job_id)
    print(f"deleted {args.job_id}")
    return 0
