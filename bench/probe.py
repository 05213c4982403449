"""Where is accuracy lost? One student budget, many pools of images (issue 10's diagnosis).

Every arm distils the same student (``tiny_cnn`` by default) with plain KD (T = 4, teacher
logits on the student's augmented view, SGD with Nesterov and cosine decay) for a fixed number
of steps; only the pool of images it is distilled on changes. Scored on ``shape8`` validation
renders, never test renders.

    python -m bench.probe --arms real,real_blur,real_decoded,prior,prior_filtered,optimised --seeds 2

Arms:
- ``real``: real train renders; ``real_blur``: the same, Gaussian-blurred (kernel 5, sigma 1.2);
- ``real_decoded``: real renders drawn by the decoder (codes fitted to the pixels by Adam);
- ``prior``: decoded samples of the latent prior, no optimisation, labelled by the teacher;
- ``prior_filtered``: the most class-like prior samples per class out of ``--candidates`` times more;
- ``optimised``: the method's synthesis (inversion toward class texts) from prior samples.

Prints one JSON line per (arm, seed), then a summary line; ``--log`` appends the summary to a JSONL file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.paper import accuracy
from bench.tasks import get_task
from bench.train_decoder import load_encoder
from bench.world import render as render_scenes
from bench.world import sample_scenes
from core.distill import DistillConfig, Distiller
from core.generators import create_generator
from core.generators.decoder import load_decoder
from core.students import create_student_for
from core.synthesis import ClassPrompts, SurrogateSet, SynthesisConfig, build_targets, prior_sampler, synthesize, teacher_probabilities
from core.teachers import Teacher, create_teacher

BLUR_KERNEL, BLUR_SIGMA = 5, 1.2
CODE_FIT_STEPS, CODE_FIT_LR = 100, 0.05  # Adam on latents to draw real renders with the decoder
CODE_FIT_STEPS_FROM_ENCODER = 20  # from the encoder's means the fit starts close
UNLABELLED_DISTRACTOR_PROB = 0.8  # the decoder's own training distribution


def blur(images: torch.Tensor, kernel: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    x = torch.arange(kernel, dtype=torch.float32) - (kernel - 1) / 2
    weights = torch.exp(-(x**2) / (2 * sigma**2))
    weights = weights / weights.sum()
    k2 = (weights[:, None] * weights[None, :]).expand(3, 1, kernel, kernel)
    return F.conv2d(F.pad(images, [kernel // 2] * 4, mode="reflect"), k2, groups=3)


def fit_codes(
    decoder: torch.nn.Module,
    images: torch.Tensor,
    *,
    steps: int,
    lr: float,
    seed: int,
    encoder: torch.nn.Module | None = None,
    batch: int = 512,
) -> torch.Tensor:
    """Latents whose decoding matches ``images`` (pixel L1) by Adam, from the encoder's means when
    one is given (then a few steps suffice), else from N(0, I)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for part in images.split(batch):
        if encoder is not None:
            with torch.no_grad():
                z = encoder(part)[0].requires_grad_(True)
        else:
            z = torch.randn(len(part), *decoder.config.latent_shape, generator=g).requires_grad_(True)
        optimizer = torch.optim.Adam([z], lr=lr)
        for _ in range(steps):
            loss = F.l1_loss(decoder(z), part)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        out.append(z.detach())
    return torch.cat(out)


class Probe:
    def __init__(self, teacher: Teacher, args: argparse.Namespace) -> None:
        self.teacher, self.args = teacher, args
        self.task = get_task(args.task)
        prompts = [c.text for c in self.task.classes]
        self.targets = build_targets(teacher, [ClassPrompts(t) for t in prompts], list(teacher.default_styles))
        self.generator_options = dict(json.loads(args.generator_options))

    def labelled(self, images: torch.Tensor) -> SurrogateSet:
        labels = teacher_probabilities(self.teacher, self.targets.classifier, images).argmax(1).cpu()
        return SurrogateSet(images, labels, torch.full((len(images),), -1))

    def decoded_prior(self, n: int, seed: int) -> torch.Tensor:
        generator = create_generator(
            "decoder", n, self.teacher.image_size, rng=torch.Generator().manual_seed(seed), **self.generator_options
        )
        with torch.no_grad():
            return torch.cat([generator.decoder(z) for z in generator.latents().split(1024)])

    def arm(self, name: str, seed: int) -> SurrogateSet:
        a = self.args
        if name in ("real", "real_blur", "real_decoded"):
            images, labels = self.task.render("train", a.real_images, size=self.teacher.image_size)
            if name == "real_blur":
                images = blur(images)
            if name == "real_decoded":
                decoder = load_decoder(self.generator_options.get("decoder", "shapes-vae"))
                encoder = load_encoder(Path(a.encoder), decoder.config) if a.encoder else None
                steps = CODE_FIT_STEPS_FROM_ENCODER if encoder is not None else CODE_FIT_STEPS
                z = fit_codes(decoder, images, steps=steps, lr=CODE_FIT_LR, seed=seed, encoder=encoder)
                with torch.no_grad():
                    decoded = torch.cat([decoder(part) for part in z.split(1024)])
                l1 = round(float((decoded - images).abs().mean()), 4)
                print(json.dumps({"arm": name, "seed": seed, "decoded_l1": l1}), file=sys.stderr)
                images = decoded
            return SurrogateSet(images, labels, torch.full((len(images),), -1))
        if name == "unlabelled":  # real world images, all shapes, with the distractor glyph (the decoder's training data)
            g = torch.Generator().manual_seed(1000 + seed)
            return self.labelled(
                render_scenes(sample_scenes(a.pool, g, distractor_prob=UNLABELLED_DISTRACTOR_PROB), self.teacher.image_size, g)
            )
        if name == "prior":
            return self.labelled(self.decoded_prior(a.pool, seed))
        if name == "prior_filtered":
            k = len(self.task.classes)
            per_class = a.pool // k
            images = self.decoded_prior(a.pool * a.candidates, seed)
            probabilities = teacher_probabilities(self.teacher, self.targets.classifier, images)
            keep = torch.cat([probabilities[:, c].topk(per_class).indices for c in range(k)]).unique()
            return self.labelled(images[keep.cpu()])
        if name == "optimised":
            config = SynthesisConfig(
                images_per_class=a.pool // len(self.task.classes),
                steps=a.synth_steps,
                lr=a.synth_lr,
                generator="decoder",
                generator_options=tuple(self.generator_options.items()),
                cutouts=a.cutouts,
                batch_size=256,
                prior_weight=a.prior_weight,
                init_candidates=a.init_candidates,
                neighbours=a.neighbours,
                neighbour_scale=a.neighbour_scale,
            )
            return synthesize(self.teacher, self.targets, config, seed=seed)
        raise SystemExit(f"unknown arm {name!r}")

    def score(self, data: SurrogateSet, seed: int) -> float:
        a = self.args
        torch.manual_seed(seed)
        student = create_student_for(self.teacher, a.student, len(self.task.classes))
        config = DistillConfig(method=a.method, steps=a.steps, batch_size=a.batch, lr=a.lr, fresh_share=a.fresh_share)
        synthesis = SynthesisConfig(generator="decoder", generator_options=tuple(self.generator_options.items()))
        sampler = prior_sampler(synthesis, self.teacher.image_size, self.teacher.device) if a.fresh_share > 0 else None
        Distiller(student, self.teacher, self.targets.classifier, config, seed=seed, sampler=sampler).fit(data)
        return accuracy(student.cpu(), self.task, "val", a.eval_images)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", default="real,real_blur,real_decoded,prior,prior_filtered,optimised")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1 (one process per seed)")
    parser.add_argument("--task", default="shape8")
    parser.add_argument("--student", default="tiny_cnn")
    parser.add_argument("--steps", type=int, default=2000, help="student KD steps, every arm")
    parser.add_argument("--method", default="kd", choices=("ce", "kd", "ce_kd", "meta_kd", "meta_ce_kd"), help="distillation loss")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--fresh-share", type=float, default=0.0, help="share of each batch drawn fresh from the prior")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--eval-images", type=int, default=2000)
    parser.add_argument("--real-images", type=int, default=2048)
    parser.add_argument("--pool", type=int, default=16384, help="images in the prior arms")
    parser.add_argument("--candidates", type=int, default=4, help="prior_filtered: candidates per kept image")
    parser.add_argument("--synth-steps", type=int, default=10)
    parser.add_argument("--synth-lr", type=float, default=0.1)
    parser.add_argument("--cutouts", type=int, default=2)
    parser.add_argument("--prior-weight", type=float, default=0.0)
    parser.add_argument("--init-candidates", type=int, default=1)
    parser.add_argument("--neighbours", type=int, default=0, help="optimised: pool growth, neighbours per image")
    parser.add_argument("--neighbour-scale", type=float, default=0.5)
    parser.add_argument(
        "--generator-options", default='{"decoder": "shapes-vae", "prior": "fitted"}', help="decoder factory options (JSON)"
    )
    parser.add_argument("--encoder", default=None, help="real_decoded: start the code fit from this encoder (runs/...)")
    parser.add_argument("--label", default="")
    parser.add_argument("--log", default=None, help="append the summary as a JSON line to this file")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    teacher = create_teacher("shapes-mini", device="cpu")
    probe = Probe(teacher, args)
    results: dict[str, list[float]] = {}
    started = time.monotonic()
    for arm in args.arms.split(","):
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            t0 = time.monotonic()
            data = probe.arm(arm, seed)
            t1 = time.monotonic()
            value = probe.score(data, seed)
            results.setdefault(arm, []).append(value)
            line = {
                "arm": arm,
                "seed": seed,
                "images": len(data),
                "val": round(value, 4),
                "pool_s": round(t1 - t0),
                "distill_s": round(time.monotonic() - t1),
            }
            print(json.dumps(line), flush=True)
    teacher_val = zero_shot_val(teacher, probe)
    summary = {
        "label": args.label,
        "date": time.strftime("%Y-%m-%d"),
        "args": {k: v for k, v in vars(args).items() if k not in ("log",)},
        "teacher_val": round(teacher_val, 4),
        "arms": {
            k: {
                "mean": round(statistics.mean(v), 4),
                "std": round(statistics.pstdev(v), 4),
                "ratio": round(statistics.mean(v) / teacher_val, 3),
            }
            for k, v in results.items()
        },
        "seconds": round(time.monotonic() - started),
    }
    print(json.dumps(summary), flush=True)
    if args.log:
        with Path(args.log).open("a") as handle:
            handle.write(json.dumps(summary) + "\n")


def zero_shot_val(teacher: Teacher, probe: Probe) -> float:
    from bench.evaluate import zero_shot

    return zero_shot(teacher, probe.task, split="val", images=probe.args.eval_images).accuracy


if __name__ == "__main__":
    main()
