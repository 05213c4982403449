"""Train the `shapes-mini` teacher: a small CLIP, contrastively, on freshly rendered shapes-world images.

Reproducible: every batch is rendered from (seed, step), and torch's RNG is seeded. Usage:

    python -m bench.train_teacher --steps 3000 --out core/teachers/bundled/shapes-mini
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from bench.captions import captions_for
from bench.evaluate import zero_shot
from bench.world import render, sample_scenes
from core.teachers.base import Teacher
from core.teachers.clip_config import TeacherConfig, build_clip

DISTRACTOR_PROB = 0.8  # share of pre-training images that contain the smiley glyph
EVAL_TASKS = ("shape8", "color8", "combo")


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


def evaluate(model: torch.nn.Module, config: TeacherConfig, tokenizer, split: str, images: int) -> dict[str, float]:
    teacher = Teacher(config.name, model, tokenizer, image_size=config.image_size, mean=config.image_mean, std=config.image_std)
    scores = {task: zero_shot(teacher, task, split=split, images=images).accuracy for task in EVAL_TASKS}
    model.train().requires_grad_(True)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="core/teachers/bundled/shapes-mini/config.json")
    parser.add_argument("--out", default="core/teachers/bundled/shapes-mini")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--warmup", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-every", type=int, default=500)
    args = parser.parse_args()

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

    log: list[dict] = []
    start = time.time()
    for step in range(args.steps):
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        scenes = sample_scenes(args.batch, g, distractor_prob=DISTRACTOR_PROB)
        images = render(scenes, config.image_size, g)
        captions = captions_for(scenes, random.Random(args.seed * 1_000_003 + step))
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
            scores = evaluate(model, config, tokenizer, "val", 500)
            log.append({"step": step + 1, "seconds": round(time.time() - start, 1), "loss": round(loss.item(), 4), "val": scores})
            print("eval", json.dumps(log[-1]), flush=True)
    train_seconds = time.time() - start

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "weights.safetensors"), metadata={"format": "pt", "teacher": config.name})
    if Path(args.config).resolve() != (out / "config.json").resolve():
        (out / "config.json").write_text(Path(args.config).read_text())
    test = evaluate(model.half().float(), config, tokenizer, "test", 2000)
    card = {
        "teacher": config.name,
        "training": {**vars(args), "distractor_prob": DISTRACTOR_PROB, "seconds": round(train_seconds, 1)},
        "machine": {"cpu_threads": args.threads, "platform": platform.platform(), "torch": torch.__version__},
        "zero_shot_test": {"images_per_task": 2000, "template": "a photo of a {class}.", **test},
        "history": log,
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    print("final", json.dumps(card["zero_shot_test"]), f"train {train_seconds / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
