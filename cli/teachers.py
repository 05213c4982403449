"""`clipforge teachers list|pull|eval`."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path


def add_commands(groups: argparse._SubParsersAction) -> None:
    parser = groups.add_parser("teachers", help="list, fetch and evaluate CLIP teachers")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listing = commands.add_parser("list", help="teachers this machine can load")
    listing.add_argument("--all", action="store_true", help="also list every open_clip pretrained tag")
    listing.add_argument("--cache-dir", type=Path, default=None)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=run_list)

    pull = commands.add_parser("pull", help="download an open_clip pretrained tag into the cache")
    pull.add_argument("name", help="MODEL/TAG, e.g. ViT-B-32/openai")
    pull.add_argument("--cache-dir", type=Path, default=None)
    pull.set_defaults(handler=run_pull)

    evaluate = commands.add_parser("eval", help="zero-shot accuracy on a task (shapes-world renders or fashion photos)")
    evaluate.add_argument("--teacher", default="shapes-mini")
    evaluate.add_argument("--task", default="shape8")
    evaluate.add_argument("--split", choices=("val", "test"), default="test")
    evaluate.add_argument(
        "--images", type=int, default=None, help="balanced images of the split; default: all of a photo task's, 2,000 renders otherwise"
    )
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--cache-dir", type=Path, default=None)
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(handler=run_eval)


def run_list(args: argparse.Namespace) -> int:
    from core.teachers import list_teachers

    infos = list_teachers(args.cache_dir, include_tags=args.all)
    if args.json:
        print(json.dumps([asdict(i) for i in infos], indent=2))
        return 0
    for info in infos:
        state = "ready" if info.available else "not cached"
        print(f"{info.name:40s} {info.source:9s} {state:10s} {info.description}")
    return 0


def run_pull(args: argparse.Namespace) -> int:
    from core.teachers import default_cache_dir, parse_open_clip_name, pull_pretrained
    from core.teachers.sources import UnknownTeacherError

    ref = parse_open_clip_name(args.name)
    if ref is None or ref.tag is None:
        raise UnknownTeacherError(f"pull takes an open_clip MODEL/TAG such as ViT-B-32/openai, not {args.name!r}")
    path = pull_pretrained(ref, args.cache_dir or default_cache_dir())
    print(path)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from bench.evaluate import zero_shot
    from core.teachers import create_teacher

    teacher = create_teacher(args.teacher, device=args.device, cache_dir=args.cache_dir)
    result = zero_shot(teacher, args.task, split=args.split, images=args.images)
    if args.json:
        print(
            json.dumps(
                {
                    "teacher": result.teacher,
                    "task": result.task,
                    "accuracy": round(result.accuracy, 4),
                    "split": result.split,
                    "images": result.images,
                }
            )
        )
        return 0
    print(f"teacher {result.teacher}  task {result.task}  split {result.split}  images {result.images}")
    print(f"zero-shot accuracy {result.accuracy:.4f}")
    for text, accuracy in result.per_class.items():
        print(f"  {text:20s} {accuracy:.3f}")
    return 0
