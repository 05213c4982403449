"""Train a small CLIP teacher contrastively on one world: `shapes-mini` (freshly rendered shapes-world
images) or `fashion-mini` (Fashion-MNIST's train photos, our `train` split: never val, examples or test).

Reproducible: every batch is drawn from (seed, step), and torch's RNG is seeded. Usage:

    python -m bench.train_teacher --steps 3000 --out core/teachers/bundled/shapes-mini
    python -m bench.train_teacher --world fashion --steps N --threads 1 --out core/teachers/bundled/fashion-mini
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from bench import fashion
from bench.captions import ALTERED_PHOTO_STYLES, captions_for, fashion_captions_for
from bench.evaluate import zero_shot
from bench.world import render, sample_scenes
from core.teachers.base import Teacher
from core.teachers.clip_config import TeacherConfig, build_clip

DISTRACTOR_PROB = 0.8  # share of shapes pre-training images that contain the smiley glyph
# Fashion photo augmentation: shift by up to this many pixels (at the teacher's size), mirror half of them,
# and alter this share with one of ALTERED_PHOTO_STYLES (which their captions then mostly name).
FASHION_MAX_SHIFT = 2
FASHION_ALTERED_SHARE = 0.3

Batch = tuple[torch.Tensor, list[str]]  # images (B,3,S,S) in [0,1] and one caption each


@dataclass(frozen=True)
class World:
    """What a teacher is trained on, and how it is scored while it trains."""

    name: str  # the --world value
    config: str  # the teacher config it trains by default
    out: str  # where it writes the teacher by default
    eval_tasks: tuple[str, ...]  # zero-shot tasks scored during and after training
    val_images: int | None  # images per task for the val history; None: the whole split
    test_images: int | None  # images per task for the card's test figures; None: the whole split
    notes: dict[str, float | int]  # world settings recorded on the card


def shapes_batch(seed: int, step: int, size: int, batch: int) -> Batch:
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    scenes = sample_scenes(batch, g, distractor_prob=DISTRACTOR_PROB)
    images = render(scenes, size, g)
    return images, captions_for(scenes, random.Random(seed * 1_000_003 + step))


def alter_photos(pixels: torch.Tensor, alteration: str, g: torch.Generator) -> torch.Tensor:
    """The look that ALTERED_PHOTO_STYLES names: blurred, noisy, dark or faded photos."""
    if alteration == "blurred":
        kernel = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
        kernel = (kernel[:, None] * kernel[None, :] / 256).view(1, 1, 5, 5).repeat(3, 1, 1, 1)
        return F.conv2d(F.pad(pixels, (2, 2, 2, 2), mode="replicate"), kernel, groups=3)
    if alteration == "noisy":
        return (pixels + 0.15 * torch.randn(pixels.shape, generator=g)).clamp(0, 1)
    if alteration == "dark":
        return pixels * 0.45
    if alteration == "faded":
        return 0.35 + 0.4 * pixels
    raise ValueError(f"unknown alteration {alteration!r}")


def fashion_batch(photos: fashion.PhotoSplit, seed: int, step: int, size: int, batch: int) -> Batch:
    """Train photos drawn with replacement, shifted, mirrored and sometimes altered; captions from their labels."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    rng = random.Random(seed * 1_000_003 + step)
    index = torch.randint(len(photos.labels), (batch,), generator=g)
    pixels = fashion.to_pixels(photos.images[index], size)
    # Shift: pad with black (the photos' background) and crop back at a random offset per photo.
    padded = F.pad(pixels, (FASHION_MAX_SHIFT,) * 4)
    offsets = torch.randint(2 * FASHION_MAX_SHIFT + 1, (batch, 2), generator=g).tolist()
    pixels = torch.stack([padded[i, :, y : y + size, x : x + size] for i, (y, x) in enumerate(offsets)])
    mirrored = torch.rand(batch, generator=g) < 0.5
    pixels[mirrored] = pixels[mirrored].flip(-1)
    alterations: list[str | None] = [
        rng.choice(tuple(ALTERED_PHOTO_STYLES)) if rng.random() < FASHION_ALTERED_SHARE else None for _ in range(batch)
    ]
    for alteration in ALTERED_PHOTO_STYLES:
        chosen = torch.tensor([a == alteration for a in alterations])
        if chosen.any():
            pixels[chosen] = alter_photos(pixels[chosen], alteration, g)
    class_texts = [fashion.FASHION_CLASSES[int(k)] for k in photos.labels[index]]
    return pixels, fashion_captions_for(class_texts, alterations, rng)


WORLDS: dict[str, World] = {
    "shapes": World(
        "shapes",
        "core/teachers/bundled/shapes-mini/config.json",
        "core/teachers/bundled/shapes-mini",
        ("shape8", "color8", "combo"),
        val_images=500,
        test_images=2000,
        notes={"distractor_prob": DISTRACTOR_PROB},
    ),
    "fashion": World(
        "fashion",
        "core/teachers/bundled/fashion-mini/config.json",
        "core/teachers/bundled/fashion-mini",
        ("fashion10", "fashion-footwear", "fashion-tops"),
        val_images=None,
        test_images=None,
        notes={"max_shift": FASHION_MAX_SHIFT, "altered_share": FASHION_ALTERED_SHARE},
    ),
}


def batch_source(world: World, seed: int, size: int, batch: int) -> Callable[[int], Batch]:
    """The world's training batch for each step."""
    if world.name == "fashion":
        photos = fashion.load_fashion().split("train")
        return lambda step: fashion_batch(photos, seed, step, size, batch)
    return lambda step: shapes_batch(seed, step, size, batch)


def multi_positive_clip_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, scale: torch.Tensor, captions: list[str]
) -> torch.Tensor:
    """Symmetric InfoNCE where identical captions in a batch are positives, not negatives."""
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    caption_ids = torch.tensor([ids[c] for c in captions], device=image_features.device)
    same = (caption_ids[:, None] == caption_ids[None, :]).float()
    targets = same / same.sum(1, keepdim=True)
    logits = scale * image_features @ text_features.T
    loss_i = -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()
    loss_t = -(targets * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    return (loss_i + loss_t) / 2


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on gains, biases and the temperature (1-d parameters)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def evaluate(model: torch.nn.Module, config: TeacherConfig, tokenizer, world: World, split: str, images: int | None) -> dict[str, float]:
    teacher = Teacher(config.name, model, tokenizer, image_size=config.image_size, mean=config.image_mean, std=config.image_std)
    scores = {task: zero_shot(teacher, task, split=split, images=images).accuracy for task in world.eval_tasks}
    model.train().requires_grad_(True)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--world", choices=sorted(WORLDS), default="shapes")
    parser.add_argument("--config", default=None, help="the teacher config; default: the world's bundled teacher's")
    parser.add_argument("--out", default=None, help="default: the world's bundled teacher folder")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--warmup", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--no-save", action="store_true", help="a trial: print the val history, write nothing")
    args = parser.parse_args()
    world = WORLDS[args.world]
    args.config = args.config or world.config
    args.out = args.out or world.out

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    config = TeacherConfig.from_file(args.config)
    model = build_clip(config).train()
    tokenizer = open_clip.get_tokenizer("RN50", context_length=config.context_length)
    optimizer = torch.optim.AdamW(parameter_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.98), eps=1e-6)

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * 0.5 * (1 + math.cos(math.pi * progress))

    next_batch = batch_source(world, args.seed, config.image_size, args.batch)
    log: list[dict] = []
    start = time.time()
    for step in range(args.steps):
        images, captions = next_batch(step)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        normalised = (images - torch.tensor(config.image_mean).view(1, 3, 1, 1)) / torch.tensor(config.image_std).view(1, 3, 1, 1)
        image_features = F.normalize(model.encode_image(normalised), dim=-1)
        text_features = F.normalize(model.encode_text(tokenizer(captions)), dim=-1)
        loss = multi_positive_clip_loss(image_features, text_features, model.logit_scale.exp(), captions)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.4f} scale {model.logit_scale.exp().item():.1f} {time.time() - start:.0f}s", flush=True)
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            scores = evaluate(model, config, tokenizer, world, "val", world.val_images)
            log.append({"step": step + 1, "seconds": round(time.time() - start, 1), "loss": round(loss.item(), 4), "val": scores})
            print("eval", json.dumps(log[-1]), flush=True)
    train_seconds = time.time() - start
    if args.no_save:
        print(f"trial done: train {train_seconds / 60:.1f} min", flush=True)
        return

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "weights.safetensors"), metadata={"format": "pt", "teacher": config.name})
    if Path(args.config).resolve() != (out / "config.json").resolve():
        (out / "config.json").write_text(Path(args.config).read_text())
    test = evaluate(model.half().float(), config, tokenizer, world, "test", world.test_images)
    card = {
        "teacher": config.name,
        "training": {**vars(args), **world.notes, "seconds": round(train_seconds, 1)},
        "machine": {
            "cpu_threads": args.threads,
            "platform": platform.platform(),
            "torch": torch.__version__,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],  # other work sharing the CPU slows training
        },
        "zero_shot_test": {"images_per_task": world.test_images or "the whole test split", "template": "a photo of a {class}.", **test},
        "history": log,
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    print("final", json.dumps(card["zero_shot_test"]), f"train {train_seconds / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
