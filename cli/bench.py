"""`clipforge bench paper`: the paper's tables on the shapes world."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cli.customize import add_bank_arguments
from cli.errors import CliError


def add_commands(groups: argparse._SubParsersAction) -> None:
    parser = groups.add_parser("bench", help="benchmarks on the shapes world")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    paper = commands.add_parser("paper", help="reproduce the paper's tables (Table 1, Table 6, BatchNorm, generators)")
    paper.add_argument("--quick", action="store_true", help="small budget (about 8 minutes on 2 cores)")
    paper.add_argument("--seeds", type=int, default=3)
    paper.add_argument("--rows", default=None, help="comma-separated row keys (default: all)")
    paper.add_argument("--world", choices=("shapes", "fashion"), default="shapes", help="the shapes world, or real photos (Fashion-MNIST)")
    paper.add_argument("--teacher", default=None, help="default: the world's bundled teacher")
    paper.add_argument("--device", default="auto")
    paper.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is robust on a shared CPU)")
    paper.add_argument("--out", type=Path, required=True)
    add_bank_arguments(paper)
    paper.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1 (one process per seed)")
    paper.add_argument(
        "--render", type=Path, nargs="+", default=None, help="only re-render runs' paper.json into --out (several: merged over their seeds)"
    )
    paper.set_defaults(handler=run_paper)

    speed = commands.add_parser("speed", help="the exported student's latency against its teacher's, INT8, synthesis throughput")
    speed.add_argument("--onnx", type=Path, default=None, help="student.onnx written by a job (default with --jobs: the first job's)")
    speed.add_argument(
        "--jobs",
        action="store_true",
        help="also time the job itself: a sample bank's build, default jobs on it and one without it, and the distillation "
        "step under each lever (about 10 minutes on 2 cores)",
    )
    speed.add_argument("--int8", action="store_true", help="also quantize it to INT8 and compare accuracy on test renders")
    speed.add_argument("--task", default="shape8", help="the task the INT8 accuracy is measured on")
    speed.add_argument("--images", type=int, default=2000, help="test renders for the INT8 accuracy")
    speed.add_argument("--threads", type=int, default=1, help="CPU threads for every model (1: steady on a shared machine)")
    speed.add_argument("--repeats", type=int, default=50)
    speed.add_argument("--out", type=Path, default=None, help="write speed.md and speed.json into this folder")
    speed.set_defaults(handler=run_speed)

    workers = commands.add_parser("workers", help="one job's speed-up from 2 workers over 1 (its synthesis split into chunks)")
    from bench.workers import add_arguments as add_workers_arguments

    add_workers_arguments(workers)
    workers.set_defaults(handler=run_workers)

    student = commands.add_parser("student", help="accuracy of an exported ONNX student (onnxruntime) beside its teacher")
    unknown = commands.add_parser("unknown", help="a student's 'unknown' answer on real images of its classes and of others")
    unknown.add_argument("--onnx", type=Path, required=True, help="student.onnx written by a job (its card holds the calibration)")
    unknown.add_argument("--task", required=True, help="the student's classes as a task, e.g. shapes:circle,square,triangle,star")
    unknown.add_argument("--outside", required=True, help="classes outside the job, e.g. shapes:hexagon,cross,heart,ring")
    unknown.add_argument("--split", default="test", choices=("val", "test"))
    unknown.add_argument("--images", type=int, default=2000, help="renders of each task")
    unknown.set_defaults(handler=run_unknown)

    student.add_argument("--onnx", type=Path, required=True, help="student.onnx written by `clipforge customize`")
    student.add_argument("--task", default="shape8", help="a task, or shapes:<shape>,<shape>,... (a subset of shape8, in that order)")
    student.add_argument("--split", default="test", choices=("val", "test"), help="val renders to choose settings, test to report")
    student.add_argument("--images", type=int, default=None, help="default: 2,000 renders, or a photo task's whole split")
    student.add_argument("--teacher", default=None, help="default: the teacher named in the model card")
    student.add_argument(
        "--images-dir",
        type=Path,
        default=None,
        help="score image files instead of renders: a folder per task class (as `clipforge jobs evaluate` sends them)",
    )
    student.add_argument("--json", action="store_true")
    student.set_defaults(handler=run_student)


def run_paper(args: argparse.Namespace) -> int:
    import json

    from bench.paper import BUDGETS, WORLDS, PaperBenchmark, write_report
    from core.registry import UnknownNameError
    from core.teachers import create_teacher

    if args.render is not None:
        from bench.paper import merge_reports

        for path in args.render:
            if not path.is_file():
                raise CliError("file_not_found", f"no report at {path}")
        reports = [json.loads(path.read_text()) for path in args.render]
        write_report(merge_reports(reports) if len(reports) > 1 else reports[0], args.out)
        print((args.out / "paper.md").read_text())
        return 0

    world = WORLDS[args.world]
    rows = world.rows
    if args.rows:
        wanted = [key.strip() for key in args.rows.split(",")]
        known = {row.key: row for row in world.rows}
        for key in wanted:
            if key not in known:
                raise UnknownNameError("benchmark row", key, list(known))
        rows = tuple(known[key] for key in wanted)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    teacher = create_teacher(args.teacher or world.teacher, device=args.device)
    start = time.monotonic()
    from cli.customize import bank_request

    benchmark = PaperBenchmark(
        teacher,
        BUDGETS["quick" if args.quick else "full"],
        log=lambda line: print(line, file=sys.stderr, flush=True),
        bank=bank_request(args),
    )

    def write(report: dict) -> None:
        # After every seed, so a long run leaves its finished seeds behind even if it is stopped.
        report["total_seconds"] = round(time.monotonic() - start, 1)
        write_report(report, args.out)

    benchmark.run(args.seeds, rows, on_seed_done=write, first_seed=args.first_seed)
    print((args.out / "paper.md").read_text())
    return 0


def run_speed(args: argparse.Namespace) -> int:
    import json
    import shlex

    from bench.speed import measure, to_markdown

    jobs = None
    if args.jobs:
        import tempfile

        from bench.job_speed import measure_jobs, measure_levers

        out = Path(tempfile.mkdtemp(prefix="clipforge-speed-"))
        jobs = {"jobs": measure_jobs("shapes-mini", 0, out), "levers": measure_levers("shapes-mini", "small_cnn")}
        args.onnx = args.onnx or out / "student.onnx"
    if args.onnx is None:
        raise CliError("invalid_spec", "give --onnx, or --jobs to measure the first job's student")
    if not args.onnx.is_file():
        raise CliError("file_not_found", f"no ONNX student at {args.onnx}")
    report = measure(args.onnx, int8=args.int8, threads=args.threads, repeats=args.repeats, task=args.task, eval_images=args.images)
    command = "clipforge bench speed " + " ".join(shlex.quote(a) for a in sys.argv[3:])
    markdown = to_markdown(report, command)
    if jobs is not None:
        from bench.job_speed import jobs_markdown

        report.update(jobs)
        markdown += "\n".join(jobs_markdown(jobs["jobs"], jobs["levers"])) + "\n"
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "speed.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "speed.md").write_text(markdown)
    print(markdown)
    return 0


def run_workers(args: argparse.Namespace) -> int:
    import shlex

    from bench.workers import run

    return run(args, "clipforge bench workers " + " ".join(shlex.quote(a) for a in sys.argv[3:]))


def run_unknown(args: argparse.Namespace) -> int:
    import json

    from bench.unknown import measure_unknown

    if not args.onnx.is_file():
        raise CliError("file_not_found", f"no ONNX student at {args.onnx}")
    try:
        report = measure_unknown(str(args.onnx), args.task, args.outside, split=args.split, images=args.images)
    except ValueError as exc:
        raise CliError("invalid_spec", str(exc)) from None
    print(json.dumps(report, indent=2))
    return 0


def run_student(args: argparse.Namespace) -> int:
    import json

    import torch

    from bench.evaluate import zero_shot
    from bench.tasks import get_task
    from core.export import onnx_metadata, run_onnx
    from core.images import load_folder
    from core.teachers import create_teacher

    try:
        task = get_task(args.task)
    except (ValueError, KeyError) as error:
        raise CliError("unknown_task", str(error)) from None
    if not args.onnx.is_file():
        raise CliError("file_not_found", f"no ONNX student at {args.onnx}")
    model = args.onnx.read_bytes()
    card = json.loads(onnx_metadata(model)["clipforge_model_card"])
    missing = [text for text in task.class_texts if text not in card["classes"]]
    if missing:
        raise CliError("class_mismatch", f"the student has no output for task classes {missing}; its classes: {card['classes']}")
    # The student's outputs may be in another order than the task's classes.
    order = torch.tensor([card["classes"].index(text) for text in task.class_texts])
    size = card["input"]["shape"][2]
    teacher = create_teacher(args.teacher or card["teacher"]["name"], device="auto")
    if args.images_dir is None:
        count = args.images or (task.available(args.split) if hasattr(task, "photos") else 2000)
        pixels, labels = task.render(args.split, count, size=size)
        zero = zero_shot(teacher, task, split=args.split, images=count)
        teacher_accuracy, teacher_per_class = zero.accuracy, zero.per_class
        source = f"{count} held-out {args.split} images"
    else:
        # Files decoded as the service's evaluations decode them (core.images.to_pixels), for the same answer.
        folders = [args.images_dir / text for text in task.class_texts]
        if not all(folder.is_dir() for folder in folders):
            raise CliError("file_not_found", f"{args.images_dir} needs a folder per class: {list(task.class_texts)}")
        per_class = [load_folder(folder, size) for folder in folders]
        pixels = torch.cat(per_class)
        labels = torch.cat([torch.full((len(images),), k) for k, images in enumerate(per_class)])
        weights = teacher.class_embeddings(task.class_texts)
        teacher_pixels = pixels if teacher.image_size == size else torch.cat([load_folder(f, teacher.image_size) for f in folders])
        teacher_correct = teacher.classify(teacher_pixels, weights).argmax(1).cpu() == labels
        teacher_accuracy = float(teacher_correct.float().mean())
        teacher_per_class = {text: float(teacher_correct[labels == k].float().mean()) for k, text in enumerate(task.class_texts)}
        source = f"{len(labels)} images in {args.images_dir}"
    logits = torch.from_numpy(run_onnx(model, pixels.numpy()))[:, order]
    correct = logits.argmax(1) == labels
    student_accuracy = float(correct.float().mean())
    student_per_class = {text: float(correct[labels == k].float().mean()) for k, text in enumerate(task.class_texts)}
    result = {
        "task": task.name,
        "split": args.split if args.images_dir is None else str(args.images_dir),
        "images": len(labels),
        "student_onnx_accuracy": round(student_accuracy, 4),
        "teacher_zero_shot_accuracy": round(teacher_accuracy, 4),
        "ratio": round(student_accuracy / teacher_accuracy, 4),
        "per_class": {
            text: {"student": round(student_per_class[text], 4), "teacher": round(teacher_per_class[text], 4)} for text in task.class_texts
        },
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"task {task.name}, {source}")
        print(f"  student (ONNX, onnxruntime)  {student_accuracy:.4f}")
        print(f"  teacher (zero-shot)          {teacher_accuracy:.4f}")
        print(f"  ratio                        {student_accuracy / teacher_accuracy:.3f}")
        for text in task.class_texts:
            print(f"    {text:<20} student {student_per_class[text]:.3f}  teacher {teacher_per_class[text]:.3f}")
    return 0
