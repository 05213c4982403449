"""`clipforge predict`: an exported student's top classes for image files, with the torch-free runtime
(clipforge_runtime: onnxruntime, numpy and Pillow), as a user's own program would run it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cli.errors import CliError
from cli.jobs import IMAGE_SUFFIXES


def add_commands(groups: argparse._SubParsersAction) -> None:
    parser = groups.add_parser("predict", help="a student's top classes for images (onnxruntime only)")
    parser.add_argument("--model", type=Path, required=True, help="student.onnx written by a job")
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE|DIR", help="image files, or folders searched recursively")
    parser.add_argument("--top-k", type=int, default=3, help="classes per image (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: its own)")
    parser.add_argument(
        "--unknown",
        action="store_true",
        help="flag an image scored below the job's calibrated threshold (its card): maybe none of its classes",
    )
    parser.add_argument("--json", action="store_true", help="one JSON document: every image's top classes")
    parser.set_defaults(handler=run_predict)


def image_files(paths: list[Path]) -> list[Path]:
    """The files named, and the image files under the folders named (sorted), in the order given."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise CliError("file_not_found", f"no image or folder at {path}")
    if not files:
        raise CliError("no_images", "no image files in the folders given")
    return files


def run_predict(args: argparse.Namespace) -> int:
    from PIL import UnidentifiedImageError

    from clipforge_runtime import Student

    if not args.model.is_file():
        raise CliError("file_not_found", f"no ONNX student at {args.model}")
    if args.top_k < 1:
        raise CliError("invalid_spec", "--top-k must be at least 1")
    student = Student.load(args.model, threads=args.threads)
    files = image_files(args.images)
    try:
        predictions = student.predict(files, top_k=args.top_k, unknown=args.unknown)
    except (UnidentifiedImageError, OSError) as exc:
        raise CliError("invalid_image", f"an image could not be read: {exc}") from None
    if args.json:
        document = {"model": str(args.model), "classes": student.classes, "predictions": [p.to_json() for p in predictions]}
        print(json.dumps(document, indent=2))
        return 0
    for prediction in predictions:
        top = ", ".join(f"{name} {probability:.3f}" for name, probability in prediction.top)
        verdict = ""
        if prediction.unknown:  # a flag beside the answer: the top class is still the answer
            verdict = f"\tmay be none of these (score {prediction.unknown_score:.2f} < {prediction.unknown_threshold:.2f})"
        print(f"{prediction.source}\t{top}{verdict}")
    return 0
