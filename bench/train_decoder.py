"""Train the `shapes-vae` latent decoder: a small VAE on freshly rendered, unlabelled shapes-world images.

The decoder is the image prior for inversion (VQGAN's role in the paper); only its weights are
bundled. Like VQGAN on ImageNet it sees no labels, and its training images contain the
distractor glyph as often as the teacher's did. Reproducible: every batch is rendered from
(seed, step), torch's RNG is seeded, and training stops at a step count; ``--minutes`` is only
a safety cap (the card records which one stopped it). Usage:

    python -m bench.train_decoder --minutes 18 --out core/generators/bundled/shapes-vae

After training it evaluates (``evaluate_decoder``): the teacher's zero-shot accuracy on test
images vs on their reconstructions, latent statistics, gradient-descent fits of ``z`` from a
random start, and what images from ``z ~ N(0, I)`` look like to the teacher; all go to card.json.
``--eval-only`` re-runs the evaluation of a saved decoder with the encoder kept under runs/.

It also fits the bundle's latent prior (``latent_prior.safetensors``) over the encoder's posterior
means of unlabelled world images (no labels): by default a kernel density estimate, one Gaussian
component per code with the codes' covariance scaled by ``KDE_BANDWIDTH``**2 (issue 10: one
full-covariance Gaussian's samples decode to colour soup and a student distilled on them reaches
0.33 on val; the kernel density's reach 0.75). ``--prior-components K`` fits a K-component mixture
instead (1: the single Gaussian). ``--fit-prior`` refits it alone from the kept encoder, which a
fresh clone does not have: ``--finetune-encoder N`` trains one against the shipped decoder first.

``--adversarial-steps N`` adds VQGAN's second stage (issue 10: a sharper decoder raises the ceiling
of what inversion can draw): after the reconstruction steps, the decoder and encoder go on with a
PatchGAN discriminator under the hinge loss, its weight set by VQGAN's adaptive rule (the ratio of
the reconstruction and adversarial gradient norms at the decoder's last layer), plus a perceptual
term: the cosine distance between the teacher's image embeddings of the reconstruction and the
original (the one pretrained image network this offline world has; LPIPS plays this part for VQGAN).
``--resume-from DIR`` starts that stage from a saved decoder (and the kept encoder) instead of
training the first stage again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from bench.tasks import get_task
from bench.world import render, sample_scenes
from core.generators.decoder import GROUP_NORM_GROUPS, DecoderConfig, LatentDecoder, LatentEncoder, load_decoder_from, prior_file
from core.generators.decoder import load_encoder_file as load_encoder
from core.generators.priors import PRIOR_SEED, encode_means, save_prior
from core.generators.training import (
    TrainingConfig,
    TrainingProgress,
    edge_l1,
    kl_per_element,
    reconstruct,
    save_decoder_files,
    save_grid,
    train_vae,
)
from core.teachers import Teacher, create_teacher

DISTRACTOR_PROB = 0.8  # same share of glyph images as the teacher's pre-training data
EVAL_TASKS = ("shape8", "color8", "combo")
EVAL_IMAGES = 2000  # test images per task, as in the teacher's card
MAX_ACCURACY_GAP = 0.05  # requirement: reconstructions cost the teacher at most 5 points per task
STATS_IMAGES = 1000  # training-distribution images for latent statistics
FIT_IMAGES = 64  # held-out images fitted by gradient descent on z from a random start
FIT_STEPS = 100
FIT_LR = 0.05
FIT_REPORT_STEPS = (0, 25, 50, 100)
SAMPLE_IMAGES = 256  # images decoded from z ~ N(0, I)
GRID_PER_TASK = 8  # images per task in reconstructions.png (shape8 and color8)
GRID_SCALE = 3  # nearest-neighbour upscaling of the 32 px images in the PNG grids
EVAL_SEED = 12345  # random z for the fits and the samples
LOG_EVERY = 50
PRIOR_IMAGES = 8192  # unlabelled training-distribution images for the latent Gaussian (512 dims: 16 images per dimension)
PRIOR_BATCH = 512  # rendered per batch; the batches of the prior fit come from PRIOR_SEED, apart from training and evaluation
FINETUNE_SEED_OFFSET = 1  # encoder fine-tuning renders batches the training run never saw
MAX_WEIGHTS_BYTES = 10 * 1024 * 1024
DISC_WIDTH = 64  # first layer of the PatchGAN discriminator; it doubles per downsampling
ADAPTIVE_WEIGHT_MAX = 1e4  # VQGAN's clamp on the adaptive adversarial weight
ADAPTIVE_WEIGHT_EPS = 1e-4

DEFAULT_CONFIG = DecoderConfig(
    name="shapes-vae",
    image_size=32,
    latent_channels=8,
    latent_size=8,
    widths=(32, 64, 128),
    blocks_per_level=1,
    description="Decoder of a small VAE (8x8x8 spatial latent, low KL weight) trained on unlabelled shapes-world images; "
    "the image prior for inversion.",
)


# ------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------


def training_batch(seed: int, step: int, batch: int, size: int) -> torch.Tensor:
    """Batch ``step`` of run ``seed``: unlabelled world images, most with the distractor glyph."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    scenes = sample_scenes(batch, g, distractor_prob=DISTRACTOR_PROB)
    return render(scenes, size, g)


def training_config(args: argparse.Namespace) -> TrainingConfig:
    return TrainingConfig(
        steps=args.steps,
        minutes=args.minutes,
        batch_size=args.batch,
        lr=args.lr,
        final_lr_ratio=args.final_lr_ratio,
        warmup_steps=args.warmup,
        edge_weight=args.edge_weight,
        kl_weight=args.kl_weight,
        clip_norm=args.clip,
        seed=args.seed,
        log_every=LOG_EVERY,
    )


def print_history(progress: TrainingProgress) -> None:
    if progress.logged is not None:
        print("train", json.dumps(progress.logged), flush=True)


def train(args: argparse.Namespace, config: DecoderConfig) -> tuple[LatentEncoder, LatentDecoder, dict]:
    """The first stage (core.generators.training.train_vae) on batches rendered from (seed, step)."""
    trained = train_vae(
        config,
        training_config(args),
        lambda step: training_batch(args.seed, step, args.batch, config.image_size),
        on_progress=print_history,
    )
    return trained.encoder, trained.decoder, trained.info


class PatchDiscriminator(nn.Module):
    """VQGAN's NLayerDiscriminator scaled to 32 px: a 6x6 map of real/fake logits, one per patch.

    GroupNorm instead of BatchNorm, so that real and fake batches are judged independently.
    """

    def __init__(self, width: int = DISC_WIDTH) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(3, width, 4, stride=2, padding=1),  # 16 x 16
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),  # 8 x 8
            nn.GroupNorm(GROUP_NORM_GROUPS, 2 * width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 4 * width, 3, stride=1, padding=0),  # 6 x 6
            nn.GroupNorm(GROUP_NORM_GROUPS, 4 * width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(4 * width, 1, 1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images * 2 - 1)


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_adversarial_weight(reconstruction_loss: torch.Tensor, generator_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """VQGAN's rule: scale the adversarial term so its gradient at the last layer matches the reconstruction's."""
    rec_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(generator_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (gan_grad.norm() + ADAPTIVE_WEIGHT_EPS)
    return weight.clamp(0.0, ADAPTIVE_WEIGHT_MAX).detach()


def perceptual_distance(teacher: Teacher, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - cosine of the teacher's image embeddings: what the teacher sees should survive the decoder."""
    with torch.no_grad():
        target_features = teacher.encode_image(target)
    return (1.0 - (teacher.encode_image(output) * target_features).sum(-1)).mean()


def train_adversarial(
    encoder: LatentEncoder, decoder: LatentDecoder, teacher: Teacher, args: argparse.Namespace, *, first_step: int
) -> dict[str, object]:
    """VQGAN's second stage: reconstruction + perceptual + adaptive-weighted hinge GAN, alternating D and G steps.

    Batches continue the first stage's sequence (``training_batch(seed, first_step + step)``), so no image repeats.
    """
    torch.manual_seed(args.seed + 1)
    discriminator = PatchDiscriminator().train()
    encoder.train().requires_grad_(True)
    decoder.train().requires_grad_(True)
    params = [*encoder.parameters(), *decoder.parameters()]
    # VQGAN's Adam betas (0.5, 0.9) for both players; the generator at a fine-tuning rate.
    g_optimizer = torch.optim.Adam(params, lr=args.adversarial_lr, betas=(0.5, 0.9))
    d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=args.adversarial_lr, betas=(0.5, 0.9))
    last_layer = decoder.net[-1].weight
    size = decoder.config.image_size
    start, history = time.time(), []
    sums: dict[str, float] = {}
    stopped_by, done = "steps", 0
    for step in range(args.adversarial_steps):
        if time.time() - start > args.adversarial_minutes * 60:
            stopped_by = "time"
            break
        images = training_batch(args.seed, first_step + step, args.batch, size)
        mean, logvar = encoder(images)
        output = decoder(mean + torch.randn_like(mean) * (0.5 * logvar).exp())
        reconstruction = (
            F.l1_loss(output, images)
            + args.edge_weight * edge_l1(output, images)
            + args.perceptual_weight * perceptual_distance(teacher, output, images)
        )
        adversarial = args.adversarial_weight > 0  # 0: a perceptual-only stage, no discriminator at all
        generator_loss = -discriminator(output).mean() if adversarial else torch.zeros(())
        weight = (
            adaptive_adversarial_weight(reconstruction, generator_loss, last_layer) * args.adversarial_weight
            if adversarial
            else torch.zeros(())
        )
        loss = reconstruction + weight * generator_loss + args.kl_weight * kl_per_element(mean, logvar)
        g_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, args.clip)
        g_optimizer.step()
        d_loss = torch.zeros(())
        if adversarial:
            d_optimizer.zero_grad(set_to_none=True)  # the generator's backward left gradients on D
            d_loss = hinge_discriminator_loss(discriminator(images), discriminator(output.detach()))
            d_loss.backward()
            d_optimizer.step()
        for key, value in (("l1", F.l1_loss(output, images)), ("g", generator_loss), ("d", d_loss), ("weight", weight)):
            sums[key] = sums.get(key, 0.0) + float(value.detach())
        done = step + 1
        if done % LOG_EVERY == 0:
            entry = {"step": done, **{k: round(v / LOG_EVERY, 5) for k, v in sums.items()}, "seconds": round(time.time() - start, 1)}
            history.append(entry)
            print("adversarial", json.dumps(entry), flush=True)
            sums = {}
    encoder.eval().requires_grad_(False)
    decoder.eval().requires_grad_(False)
    return {
        "steps_done": done,
        "stopped_by": stopped_by,
        "seconds": round(time.time() - start, 1),
        "lr": args.adversarial_lr,
        "adversarial_weight": args.adversarial_weight,
        "perceptual_weight": args.perceptual_weight,
        "discriminator": f"PatchGAN, width {DISC_WIDTH}, GroupNorm, hinge loss",
        "history": history,
    }


# ------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------


@torch.no_grad()
def reconstruction_accuracy(
    encoder: LatentEncoder, decoder: LatentDecoder, teacher: Teacher, tasks: tuple[str, ...] = EVAL_TASKS, images: int = EVAL_IMAGES
) -> dict[str, dict[str, float]]:
    """Per task: the teacher's zero-shot accuracy on test images and on their reconstructions, and the pixel MSE.

    The originals are the images ``bench.evaluate.zero_shot`` uses, so their accuracy equals it.
    """
    results = {}
    for name in tasks:
        task = get_task(name)
        pixels, labels = task.render("test", images, size=decoder.config.image_size)
        recon = reconstruct(encoder, decoder, pixels)
        weights = teacher.class_embeddings(task.class_texts)
        original_acc = float((teacher.classify(pixels, weights).argmax(1).cpu() == labels).float().mean())
        recon_acc = float((teacher.classify(recon, weights).argmax(1).cpu() == labels).float().mean())
        results[name] = {
            "original": round(original_acc, 4),
            "reconstruction": round(recon_acc, 4),
            "gap_points": round(100 * (original_acc - recon_acc), 2),
            "mse": round(float(F.mse_loss(recon, pixels)), 5),
        }
    return results


@torch.no_grad()
def latent_statistics(encoder: LatentEncoder, config: DecoderConfig, images: int = STATS_IMAGES) -> dict[str, float]:
    """How close the aggregate posterior is to N(0, I), the distribution random inits are drawn from."""
    pixels = training_batch(EVAL_SEED, 0, images, config.image_size)
    mean, logvar = encoder(pixels)
    per_channel_std = mean.transpose(0, 1).flatten(1).std(1)
    return {
        "mu_mean": round(float(mean.mean()), 4),
        "mu_std": round(float(mean.std()), 4),
        "mu_std_per_channel": [round(float(s), 4) for s in per_channel_std],
        "posterior_sigma_mean": round(float((0.5 * logvar).exp().mean()), 4),
        "kl_per_element": round(float(kl_per_element(mean, logvar)), 4),
    }


def latent_fit(encoder: LatentEncoder, decoder: LatentDecoder, *, images: int = FIT_IMAGES, steps: int = FIT_STEPS) -> dict[str, object]:
    """Gradient descent on z from z ~ N(0, I) to match held-out images (pixel MSE): is the latent
    space easy to descend from a random start, as inversion needs? Compared with the encoder's MSE."""
    targets, _ = get_task("combo").render("test", images, size=decoder.config.image_size)
    g = torch.Generator().manual_seed(EVAL_SEED)
    z = torch.randn((images, *decoder.config.latent_shape), generator=g).requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=FIT_LR)
    curve = {}
    for step in range(steps + 1):
        loss = F.mse_loss(decoder(z), targets)
        if step in FIT_REPORT_STEPS:
            curve[str(step)] = round(loss.item(), 5)
        if step == steps:
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    encoder_mse = float(F.mse_loss(reconstruct(encoder, decoder, targets), targets))
    return {
        "images": images,
        "adam_lr": FIT_LR,
        "mse_by_step": curve,
        "encoder_mse": round(encoder_mse, 5),
        "final_z_std": round(float(z.detach().std()), 4),
    }


@torch.no_grad()
def random_samples(decoder: LatentDecoder, teacher: Teacher, n: int = SAMPLE_IMAGES) -> tuple[torch.Tensor, dict[str, object]]:
    """Decode z ~ N(0, I) and describe the images numerically: the teacher's confidence and the
    spread of its predictions, next to the same numbers for real test images."""
    g = torch.Generator().manual_seed(EVAL_SEED)
    samples = decoder(torch.randn((n, *decoder.config.latent_shape), generator=g))
    stats: dict[str, object] = {"images": n, "pixel_std": round(float(samples.std()), 4)}
    for name in ("shape8", "color8"):
        task = get_task(name)
        weights = teacher.class_embeddings(task.class_texts)
        real, _ = task.render("test", n, size=decoder.config.image_size)
        probs = teacher.classify(samples, weights).softmax(1)
        real_probs = teacher.classify(real, weights).softmax(1)
        counts = torch.bincount(probs.argmax(1), minlength=len(task.classes))
        stats[name] = {
            "mean_max_prob": round(float(probs.max(1).values.mean()), 4),
            "real_mean_max_prob": round(float(real_probs.max(1).values.mean()), 4),
            "predicted_counts": dict(zip(task.class_texts, counts.tolist(), strict=True)),
        }
    return samples, stats


def evaluate_decoder(encoder: LatentEncoder, decoder: LatentDecoder, teacher: Teacher, out: Path, samples_png: Path | None) -> dict:
    """Everything the card records about a trained decoder; writes ``out/reconstructions.png``."""
    started = time.time()
    accuracy = reconstruction_accuracy(encoder, decoder, teacher)
    print("reconstruction", json.dumps(accuracy), flush=True)
    originals = torch.cat(
        [get_task(name).render("test", GRID_PER_TASK, size=decoder.config.image_size)[0] for name in ("shape8", "color8")]
    )
    save_grid([originals, reconstruct(encoder, decoder, originals)], out / "reconstructions.png")
    stats = latent_statistics(encoder, decoder.config)
    print("latents", json.dumps(stats), flush=True)
    fit = latent_fit(encoder, decoder)
    print("latent_fit", json.dumps(fit), flush=True)
    samples, sample_stats = random_samples(decoder, teacher)
    print("random_z", json.dumps(sample_stats), flush=True)
    if samples_png is not None:
        save_grid(list(samples[:64].split(16)), samples_png, scale=2)
    return {
        "zero_shot_test": {
            "images_per_task": EVAL_IMAGES,
            "template": "a photo of a {class}.",
            "reconstruction": "encoder posterior mean, then decoder",
            "max_gap_points": 100 * MAX_ACCURACY_GAP,
            "passes": all(r["gap_points"] <= 100 * MAX_ACCURACY_GAP for r in accuracy.values()),
            **accuracy,
        },
        "latent_statistics": stats,
        "latent_fit_from_random_z": fit,
        "random_z_samples": sample_stats,
        "eval_seconds": round(time.time() - started, 1),
    }


# ------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------


def save_bundle(decoder: LatentDecoder, out: Path) -> int:
    """config.json and fp16 weights.safetensors (no encoder: it stays under runs/); returns the weights' bytes."""
    size = save_decoder_files(decoder, out)["weights_bytes"]
    if size > MAX_WEIGHTS_BYTES:
        raise RuntimeError(f"weights file is {size} bytes, over the {MAX_WEIGHTS_BYTES} byte limit")
    return size


def finetune_encoder(encoder: LatentEncoder, decoder: LatentDecoder, args: argparse.Namespace) -> dict[str, object]:
    """Train the encoder alone against the frozen, shipped decoder (fp16-rounded weights).

    Why: the reconstruction check runs encoder mean -> decoder, and part of its error is the
    encoder's amortisation gap (measured: a few Adam steps on z from the encoder's mean lift
    shape8 from 93.8% to 97.0%). Inversion uses only the decoder, which this leaves untouched.
    """
    decoder = decoder.eval().requires_grad_(False)
    encoder.train().requires_grad_(True)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=args.finetune_lr)
    start, losses = time.time(), []
    for step in range(args.finetune_encoder):
        for group in optimizer.param_groups:
            group["lr"] = args.finetune_lr * 0.5 * (1 + math.cos(math.pi * step / args.finetune_encoder))
        images = training_batch(args.seed + FINETUNE_SEED_OFFSET, step, args.batch, decoder.config.image_size)
        mean, logvar = encoder(images)
        output = decoder(mean)  # the posterior mean, as the reconstruction check uses it
        loss = F.l1_loss(output, images) + args.edge_weight * edge_l1(output, images) + args.kl_weight * kl_per_element(mean, logvar)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(encoder.parameters(), args.clip)
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % LOG_EVERY == 0:
            print("finetune", step + 1, round(sum(losses[-LOG_EVERY:]) / LOG_EVERY, 5), flush=True)
    encoder.eval().requires_grad_(False)
    seconds = round(time.time() - start, 1)
    return {"steps": args.finetune_encoder, "lr": args.finetune_lr, "seconds": seconds, "final_loss": round(losses[-1], 5)}


def unlabelled_codes(encoder: LatentEncoder, config: DecoderConfig, images: int = PRIOR_IMAGES) -> torch.Tensor:
    """(images, D) encoder posterior means of unlabelled training-distribution images (seed PRIOR_SEED)."""
    batches = math.ceil(images / PRIOR_BATCH)
    return encode_means(encoder, (training_batch(PRIOR_SEED, i, PRIOR_BATCH, config.image_size) for i in range(batches)))[:images]


def fit_latent_prior(
    encoder: LatentEncoder, config: DecoderConfig, out: Path, *, images: int = PRIOR_IMAGES, components: int = 0, name: str = "fitted"
) -> dict[str, object]:
    """Fit and save a latent prior (``prior_file(name)``) over the encoder's posterior means of unlabelled images."""
    summary = save_prior(unlabelled_codes(encoder, config, images), out / prior_file(name), components=components)
    return {**summary, "images": images, "seed": PRIOR_SEED}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="decoder config JSON (default: the built-in shapes-vae config)")
    parser.add_argument("--out", default="core/generators/bundled/shapes-vae")
    parser.add_argument("--encoder-out", default=None, help="where to keep the encoder (default: runs/<name>-encoder.safetensors)")
    parser.add_argument("--samples-png", default=None, help="grid of images from random z (default: runs/<name>-samples.png)")
    parser.add_argument("--steps", type=int, default=1800)  # about 15 min at 0.5 s/step on one core
    parser.add_argument("--minutes", type=float, default=18.0, help="safety cap on training time; the step count is the budget")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--final-lr-ratio", type=float, default=0.02, help="cosine decays to this fraction of --lr")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--edge-weight", type=float, default=1.0, help="weight of the L1 on pixel differences")
    parser.add_argument("--kl-weight", type=float, default=2.5e-4, help="per latent element, against the per-pixel L1")
    parser.add_argument("--clip", type=float, default=1.0, help="gradient norm clip")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="1: as fast as 2 for these small convs, and robust to a busy CPU")
    parser.add_argument("--teacher", default="shapes-mini")
    parser.add_argument("--skip-eval", action="store_true", help="train and save only (smoke runs)")
    parser.add_argument("--eval-only", action="store_true", help="evaluate the decoder in --out with the encoder in --encoder-out")
    parser.add_argument("--fit-prior", action="store_true", help="refit the latent prior in --out from the encoder in --encoder-out")
    parser.add_argument(
        "--finetune-encoder", type=int, default=0, metavar="STEPS", help="train the kept encoder alone against the shipped decoder"
    )
    parser.add_argument("--finetune-lr", type=float, default=5e-4)
    parser.add_argument(
        "--prior-components",
        type=int,
        default=0,
        help="mixture components of the latent prior (0: one per image, a kernel density; 1: one Gaussian)",
    )
    parser.add_argument("--prior-images", type=int, default=PRIOR_IMAGES, help="unlabelled images the prior is fitted on")
    parser.add_argument("--prior-name", default="fitted", help="'fitted' (the bundle's default prior) or a variant's name")
    parser.add_argument("--name", default=None, help="the decoder's name in its config (default: the config's)")
    parser.add_argument("--adversarial-steps", type=int, default=0, help="VQGAN's second stage: steps with the discriminator")
    parser.add_argument("--adversarial-minutes", type=float, default=30.0, help="safety cap on the second stage's time")
    parser.add_argument("--adversarial-lr", type=float, default=2e-4, help="Adam rate of both players in the second stage")
    parser.add_argument("--adversarial-weight", type=float, default=0.8, help="VQGAN's disc_weight, times the adaptive weight")
    parser.add_argument("--perceptual-weight", type=float, default=1.0, help="weight of the teacher-embedding distance")
    parser.add_argument(
        "--resume-from", default=None, metavar="DIR", help="second stage only: start from this saved decoder and --resume-encoder"
    )
    parser.add_argument("--resume-encoder", default=None, help="the encoder kept with --resume-from's decoder")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    config = DecoderConfig.from_file(args.config) if args.config else DEFAULT_CONFIG
    out = Path(args.out)
    encoder_path = Path(args.encoder_out or f"runs/{config.name}-encoder.safetensors")
    samples_png = Path(args.samples_png or f"runs/{config.name}-samples.png")

    if args.finetune_encoder:
        decoder = load_decoder_from(out)
        if encoder_path.is_file():
            encoder = load_encoder(encoder_path, decoder.config)
        else:
            # A fresh clone has no encoder (it is not bundled): train one from scratch against the frozen decoder.
            print(f"no encoder at {encoder_path}: training a fresh one against the shipped decoder", flush=True)
            torch.manual_seed(args.seed)
            encoder = LatentEncoder(decoder.config)
            encoder_path.parent.mkdir(parents=True, exist_ok=True)
        card = json.loads((out / "card.json").read_text())
        card["encoder_finetune"] = finetune_encoder(encoder, decoder, args)
        save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(encoder_path))
        # The latent prior is left as fitted: the decoder did not change, and inversion results depend on it.
        card["evaluation"] = evaluate_decoder(encoder, decoder, create_teacher(args.teacher, device="cpu"), out, samples_png)
        (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
        return

    if args.fit_prior:
        decoder = load_decoder_from(out)
        card = json.loads((out / "card.json").read_text())
        fitted = fit_latent_prior(
            load_encoder(encoder_path, decoder.config),
            decoder.config,
            out,
            images=args.prior_images,
            components=args.prior_components,
            name=args.prior_name,
        )
        if args.prior_name == "fitted":
            card["latent_prior"] = fitted
            (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
        print("latent prior", json.dumps(fitted), flush=True)
        return

    if args.eval_only:
        decoder = load_decoder_from(out)
        encoder = load_encoder(encoder_path, decoder.config)
        card = json.loads((out / "card.json").read_text())
        card["evaluation"] = evaluate_decoder(encoder, decoder, create_teacher(args.teacher, device="cpu"), out, samples_png)
        (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
        return

    if args.name:
        config = dataclasses.replace(config, name=args.name)
    print("config", json.dumps(config.to_dict()), flush=True)
    if args.resume_from:
        resumed = Path(args.resume_from)
        decoder = load_decoder_from(resumed)
        config = dataclasses.replace(decoder.config, name=args.name or decoder.config.name)
        decoder.config = config
        encoder = load_encoder(Path(args.resume_encoder or f"runs/{decoder.config.name}-encoder.safetensors"), decoder.config)
        first_stage = json.loads((resumed / "card.json").read_text())["training"]
        info = {"resumed_from": str(resumed), "first_stage": first_stage, "steps_done": first_stage["steps_done"], "history": []}
    else:
        encoder, decoder, info = train(args, config)
        print(f"trained {info['steps_done']} steps in {info['seconds'] / 60:.1f} min (stopped by {info['stopped_by']})", flush=True)
    if args.adversarial_steps:
        teacher = create_teacher(args.teacher, device="cpu")
        info["adversarial"] = train_adversarial(encoder, decoder, teacher, args, first_step=int(info["steps_done"]))
        print(f"adversarial stage: {info['adversarial']['steps_done']} steps in {info['adversarial']['seconds'] / 60:.1f} min", flush=True)
    size = save_bundle(decoder, out)
    encoder_path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(encoder_path))
    card: dict = {
        "decoder": config.name,
        "architecture": {
            **config.to_dict(),
            "decoder_parameters": sum(p.numel() for p in decoder.parameters()),
            "encoder_parameters": sum(p.numel() for p in encoder.parameters()),
            "weights_bytes": size,
            "weights_dtype": "float16",
        },
        "training": {
            **{k: v for k, v in vars(args).items() if k not in ("skip_eval", "eval_only", "fit_prior", "finetune_encoder", "finetune_lr")},
            "loss_second_stage": "L1 + edge L1 + perceptual_weight * (1 - cos of teacher image embeddings) + kl_weight * KL "
            "+ adversarial_weight * adaptive weight * hinge generator loss (PatchGAN)"
            if args.adversarial_steps
            else None,
            "distractor_prob": DISTRACTOR_PROB,
            "data": "freshly rendered shapes-world images, no labels, batch rendered from (seed, step)",
            "loss": "L1 + edge_weight * L1 of pixel differences + kl_weight * KL per latent element (reparameterised sample)",
            **{k: v for k, v in info.items() if k != "history"},
        },
        "machine": {"cpu_threads": args.threads, "platform": platform.platform(), "torch": torch.__version__},
        "history": info["history"],
    }
    card["latent_prior"] = fit_latent_prior(encoder, config, out)
    if not args.skip_eval:
        # Evaluate the weights as shipped: fp16-rounded, reloaded as float32.
        shipped = load_decoder_from(out)
        card["evaluation"] = evaluate_decoder(encoder, shipped, create_teacher(args.teacher, device="cpu"), out, samples_png)
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    print("saved", out, f"weights {size / 1e6:.2f} MB", flush=True)


if __name__ == "__main__":
    main()
