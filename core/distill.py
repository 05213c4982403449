"""Stage 2: distil the teacher into a student on the surrogate set (METHOD.md).

Teacher logits are computed on the very augmented view the student sees. Meta-KD splits the
surrogate set by style into X_tr and X_te (disjoint styles); each step takes an X_tr batch and
an X_te batch from one held-out style, and minimises L(X_tr; theta) + L(X_te; theta_c).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from core.augment import AugmentConfig, apply_views, random_views, view_params
from core.checkpoints import DISTILLATION, Checkpoints, from_bytes, to_bytes
from core.losses import OBJECTIVES, meta_objective
from core.stored import EMBED_BATCH, CachedViews
from core.synthesis import SurrogateSet
from core.teachers.base import Teacher

META_METHODS = {"meta_kd": "kd", "meta_ce_kd": "ce_kd"}
PLAIN_METHODS = ("ce", "kd", "ce_kd")
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
GRAD_CLIP_NORM = 5.0  # synthetic images can give huge early gradients; clipping keeps SGD stable
# Distillation views are milder than inversion cutouts: the student should see whole objects.
DISTILL_AUGMENT = AugmentConfig(min_scale=0.8, max_scale=1.0, max_rotation_deg=8.0, noise_std=0.01, max_shift=0.08)


@dataclass(frozen=True)
class DistillConfig:
    method: str = "meta_kd"  # ce, kd, ce_kd, meta_kd, meta_ce_kd
    temperature: float = 4.0  # KD temperature T
    epochs: int = 60  # passes over the surrogate set (over X_tr for meta methods)
    steps: int | None = None  # student updates in total; None: epochs x batches per epoch
    warmup_epochs: int = 10  # plain-KD epochs before meta-KD starts
    optimizer: str = "sgd"  # "sgd" (momentum 0.9, Nesterov) or "adam"
    lr: float = 0.05  # learning rate, cosine-decayed
    inner_lr: float = 0.01  # meta-KD inner step alpha
    first_order: bool = False  # drop meta-KD's second-order term
    train_style_fraction: float = 0.5  # share of styles in X_tr
    batch_size: int = 64
    mixup: float = 0.0  # share of each batch replaced by mixes of two images (weight ~ U(0, 1)); teacher labels the mix
    fresh_share: float = 0.0  # share of each (X_tr) batch replaced by fresh images from the sampler (online synthesis)
    pool_share: float = 0.0  # share of each (X_tr) batch drawn from the user's unlabelled images (the pool sampler)
    # Augmented views per surrogate image made once, with the teacher's logits of each, at the start (0: a new random view
    # every step, the teacher run on it). With them and a sample bank for the fresh images, a step costs the student's
    # forward and backward alone: the teacher runs only on pool images (and on every view with mixup, which mixes views).
    fixed_views: int = 0
    augment: AugmentConfig = field(default_factory=lambda: DISTILL_AUGMENT)


StepCallback = Callable[[int, int, dict[str, float]], None]  # (done, total, latest losses)
# (n, rng) -> (n, 3, S, S) new images in [0, 1] on any device, e.g. decoded samples of a generator's prior.
ImageSampler = Callable[[int, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class _CachedViews:
    geometry: torch.Tensor  # (N, V, VIEW_PARAMS): each surrogate image's fixed views
    embeddings: torch.Tensor  # (N, V, D): the teacher's unit embeddings of them


def split_styles(styles: torch.Tensor, train_fraction: float, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of X_tr and X_te: disjoint style sets (random halves of images when no styles)."""
    present = styles.unique()
    if bool((present < 0).any()) or len(present) < 2:
        order = torch.randperm(len(styles), generator=rng)
        cut = max(1, round(train_fraction * len(styles)))
        return order[:cut], order[cut:]
    shuffled = present[torch.randperm(len(present), generator=rng)]
    cut = min(len(present) - 1, max(1, round(train_fraction * len(present))))
    train_styles = shuffled[:cut]
    in_train = torch.isin(styles, train_styles)
    return in_train.nonzero(as_tuple=True)[0], (~in_train).nonzero(as_tuple=True)[0]


def make_optimizer(student: nn.Module, config: DistillConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(student.parameters(), lr=config.lr, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY)
    if config.optimizer == "adam":
        return torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=WEIGHT_DECAY)
    raise ValueError(f"unknown optimizer {config.optimizer!r}")


class Distiller:
    """Trains ``student`` against ``teacher`` logits ``tau * E_img(view) . classifier^T``."""

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher,
        classifier: torch.Tensor,
        config: DistillConfig,
        *,
        seed: int,
        sampler: ImageSampler | None = None,
        pool: CachedViews | None = None,
        bank: CachedViews | None = None,
    ) -> None:
        """``bank``: fresh images are the bank's (core.bank), each with one of its views and that view's cached teacher
        embedding, instead of ``sampler``'s; surrogate images drawn from it (``SurrogateSet.sources``) take its views as
        their fixed views. ``pool``: the user's images with their cached views (core.pools): a pool share of a batch is
        drawn from them, and the teacher never runs on it."""
        if config.method not in PLAIN_METHODS and config.method not in META_METHODS:
            raise ValueError(f"unknown distillation method {config.method!r}")
        if config.fresh_share > 0 and sampler is None and bank is None:
            raise ValueError("fresh_share > 0 needs a sampler of fresh images")
        if config.pool_share > 0 and pool is None:
            raise ValueError("pool_share > 0 needs the pool's images and their cached views")
        if config.fresh_share + config.pool_share >= 1:
            raise ValueError("fresh_share + pool_share must leave room for the surrogate set's images (below 1)")
        self.student, self.teacher, self.classifier, self.config = student, teacher, classifier, config
        self.sampler, self.pool, self.bank = sampler, pool, bank
        if bank is not None and sampler is None:  # without fixed views the bank's images stand in for the sampler's
            self.sampler = lambda n, rng: bank.pixels(torch.randint(len(bank), (n,), generator=rng))
        self.cached: _CachedViews | None = None  # the surrogate set's fixed views, once fit() has made them
        self.device = teacher.device
        self.rng = torch.Generator().manual_seed(seed * 1_000_003 + 17)
        self.image_size = int(getattr(student, "image_size", teacher.image_size))

    def _mix(self, views: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixup on a share of the batch: new images between the surrogate set's ones, soft-labelled by the
        teacher (KD needs no mixed targets); a hard label follows the larger component for CE."""
        n = len(views)
        mixed = torch.rand(n, generator=self.rng) < self.config.mixup
        partner = torch.randint(n, (n,), generator=self.rng)
        weight = torch.where(mixed, torch.rand(n, generator=self.rng), torch.ones(n))
        w = weight.view(-1, 1, 1, 1).to(views.device, views.dtype)
        views = w * views + (1 - w) * views[partner.to(views.device)]
        return views, torch.where(weight >= 0.5, labels, labels[partner])

    def _views(self, images: torch.Tensor, labels: torch.Tensor, fresh: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Augmented views, teacher logits and labels; the last ``fresh`` images are unlabelled (-1):
        they take the teacher's class."""
        views = random_views(images.to(self.device), 1, self.image_size, self.rng, self.config.augment)
        if self.config.mixup > 0:
            views, labels = self._mix(views, labels)
        labels = labels.to(self.device)
        if self.config.method == "ce" and not fresh:  # plain cross-entropy never reads the teacher: skip its forward pass
            return views, views.new_empty(0), labels
        teacher_logits = self.teacher.classify(views, self.classifier, batch_size=len(views))  # no grad: KD targets
        labels = torch.where(labels >= 0, labels, teacher_logits.argmax(1))
        return views, teacher_logits, labels

    def _sample(
        self, indices: torch.Tensor, data: SurrogateSet, *, fresh_share: float = 0.0, pool_share: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A batch of surrogate images drawn from ``indices``, then fresh prior samples and the user's pool images
        (unlabelled: they take the teacher's class) in the given shares."""
        if self.cached is not None:
            views, logits, labels = self._sample_cached(indices, data, fresh_share=fresh_share, pool_share=pool_share)
        else:
            views, logits, labels = self._sample_computed(indices, data, fresh_share=fresh_share, pool_share=pool_share)
        return views.contiguous(memory_format=torch.channels_last), logits, labels  # the student's layout (fit)

    def _sample_computed(
        self, indices: torch.Tensor, data: SurrogateSet, *, fresh_share: float = 0.0, pool_share: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``_sample`` with new views of every image, through the teacher; the pool's images with their cached views."""
        size = min(self.config.batch_size, len(indices))
        fresh, pooled = round(size * fresh_share), round(size * pool_share)
        pick = indices[torch.randint(len(indices), (size - fresh - pooled,), generator=self.rng)]
        images, labels = data.images[pick].to(self.device), data.labels[pick]
        if fresh:
            assert self.sampler is not None
            with torch.no_grad():
                new = self.sampler(fresh, self.rng)
            images = torch.cat([images, new.to(self.device, images.dtype)])
            labels = torch.cat([labels, labels.new_full((fresh,), -1)])
        views, logits, labels = self._views(images, labels, fresh)
        if not pooled:
            return views, logits, labels
        assert self.pool is not None
        pool_views, pool_logits = self._draw_cached(self.pool, pooled)
        labels = torch.cat([labels, pool_logits.argmax(1)])
        logits = torch.cat([logits, pool_logits]) if len(logits) else logits  # plain CE reads no teacher logits
        return torch.cat([views, pool_views]), logits, labels

    def _draw_cached(self, cache: CachedViews, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` random images of ``cache``, each in one of its views, and the teacher's logits of those views."""
        chosen = torch.randint(len(cache), (n,), generator=self.rng)
        view = torch.randint(cache.views, (n,), generator=self.rng)
        views = apply_views(cache.pixels(chosen).to(self.device), cache.view_params[chosen, view], self.image_size)
        return views, cache.logits(self.classifier, self.teacher.logit_scale, chosen, 1 + view)

    @torch.no_grad()
    def _fix_views(self, data: SurrogateSet) -> _CachedViews:
        """``fixed_views`` views of every surrogate image and the teacher's unit embeddings of them (at the teacher's size).
        An image drawn from the bank (``data.sources``) takes the bank's views, cycled where it has fewer: the teacher
        has seen them already."""
        views = self.config.fixed_views
        geometry = view_params(len(data) * views, self.rng, self.config.augment).view(len(data), views, -1)
        size = self.teacher.image_size
        embeddings: torch.Tensor | None = None
        banked = (data.sources >= 0) if self.bank is not None else torch.zeros(len(data), dtype=torch.bool)
        if bool(banked.any()):
            assert self.bank is not None
            rows, sources = banked.nonzero(as_tuple=True)[0], data.sources[banked]
            cycle = 1 + torch.arange(views) % self.bank.views
            geometry[rows] = self.bank.view_params[sources][:, cycle - 1]
            embeddings = torch.empty(len(data), views, self.bank.embeddings.shape[-1])
            embeddings[rows] = self.bank.embeddings[sources][:, cycle].float()
        for index in (~banked).nonzero(as_tuple=True)[0].split(max(1, EMBED_BATCH // views)):
            if not len(index):  # every image drawn from the bank
                continue
            images = data.images[index].to(self.device).repeat_interleave(views, dim=0)
            viewed = apply_views(images, geometry[index].reshape(-1, geometry.shape[-1]), size)
            embedded = self.teacher.encode_image(viewed).float().view(len(index), views, -1).cpu()
            if embeddings is None:
                embeddings = torch.empty(len(data), views, embedded.shape[-1])
            embeddings[index] = embedded
        assert embeddings is not None
        return _CachedViews(geometry, embeddings.to(self.device))

    def _sample_cached(
        self, indices: torch.Tensor, data: SurrogateSet, *, fresh_share: float = 0.0, pool_share: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``_sample`` with the surrogate set's fixed views, the bank's and the pool's: their teacher logits are cached
        embeddings times the classifier; the teacher runs only on fresh images without a bank."""
        assert self.cached is not None
        size = min(self.config.batch_size, len(indices))
        fresh, pooled = round(size * fresh_share), round(size * pool_share)
        pick = indices[torch.randint(len(indices), (size - fresh - pooled,), generator=self.rng)]
        view = torch.randint(self.config.fixed_views, (len(pick),), generator=self.rng)
        views = [apply_views(data.images[pick].to(self.device), self.cached.geometry[pick, view], self.image_size)]
        logits = [self.teacher.logit_scale * self.cached.embeddings[pick, view] @ self.classifier.T]
        labels = [data.labels[pick].to(self.device)]
        for cache, count in ((self.bank, fresh), (self.pool, pooled)):
            if count and cache is not None:
                drawn_views, drawn_logits = self._draw_cached(cache, count)
                views.append(drawn_views)
                logits.append(drawn_logits)
                labels.append(torch.full((count,), -1, dtype=labels[0].dtype, device=self.device))
        if fresh and self.bank is None:  # images no cache has: new views, through the teacher
            assert self.sampler is not None
            with torch.no_grad():
                new = self.sampler(fresh, self.rng).to(self.device, views[0].dtype)
            new_views = random_views(new, 1, self.image_size, self.rng, self.config.augment)
            views.append(new_views)
            logits.append(self.teacher.classify(new_views, self.classifier, batch_size=len(new_views)))
            labels.append(torch.full((fresh,), -1, dtype=labels[0].dtype, device=self.device))
        logit = torch.cat(logits)
        label = torch.cat(labels)
        return torch.cat(views), logit, torch.where(label >= 0, label, logit.argmax(1))

    def fit(self, data: SurrogateSet, on_step: StepCallback | None = None, checkpoints: Checkpoints | None = None) -> dict[str, float]:
        """Train for the configured steps; with ``checkpoints``, resume from the last saved state and save the state
        every ``checkpoints.interval_seconds`` (the student ends the same as without them)."""
        config = self.config
        meta = config.method in META_METHODS
        objective = OBJECTIVES.create(META_METHODS.get(config.method, config.method))
        warmup_objective = OBJECTIVES.create("kd") if meta else objective
        everything = torch.arange(len(data))
        train_pool, test_pool = split_styles(data.styles, config.train_style_fraction, self.rng) if meta else (everything, everything)
        steps_per_epoch = max(1, math.ceil(len(train_pool) / config.batch_size))
        total_steps = config.steps or steps_per_epoch * config.epochs
        warmup_share = min(config.warmup_epochs, config.epochs) / config.epochs if meta else 0.0
        warmup_steps = round(total_steps * warmup_share)
        optimizer = make_optimizer(self.student, config)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total_steps)))
        test_styles = data.styles[test_pool].unique()
        if config.fixed_views > 0 and config.mixup == 0 and config.method != "ce":
            self.cached = self._fix_views(data)
        # Channels-last convolutions: 17 ms against 20 ms a small_cnn step of 64 images on 2 CPU cores (runs/s11 levers,
        # bench/results/experiments.md 2026-12-05); the weights go back to the default layout before export.
        self.student.to(memory_format=torch.channels_last).train()
        latest: dict[str, float] = {}
        start = self._resume(checkpoints, optimizer, schedule, total_steps, latest)
        last_save = time.monotonic()
        for step in range(start, total_steps):
            if step < warmup_steps or not meta:
                indices = train_pool if meta else everything
                x, t, y = self._sample(indices, data, fresh_share=config.fresh_share, pool_share=config.pool_share)
                loss = warmup_objective(self.student(x), t, y, config.temperature)
                latest = {"loss": loss.item()}
            else:
                # One held-out style per meta task (when styles exist).
                style = test_styles[torch.randint(len(test_styles), (1,), generator=self.rng)]
                pool = test_pool[data.styles[test_pool] == style] if bool((test_styles >= 0).all()) else test_pool
                loss, loss_tr, loss_te = meta_objective(
                    self.student,
                    objective,
                    self._sample(train_pool, data, fresh_share=config.fresh_share, pool_share=config.pool_share),
                    self._sample(pool, data),
                    temperature=config.temperature,
                    inner_lr=config.inner_lr,
                    first_order=config.first_order,
                )
                latest = {"loss": loss.item(), "loss_train_styles": loss_tr.item(), "loss_test_styles": loss_te.item()}
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.student.parameters(), GRAD_CLIP_NORM)
            optimizer.step()
            schedule.step()
            if on_step is not None:
                on_step(step + 1, total_steps, latest)
            if checkpoints is not None and step + 1 < total_steps and time.monotonic() - last_save >= checkpoints.interval_seconds:
                checkpoints.save(DISTILLATION, self._state(step + 1, total_steps, optimizer, schedule, latest))
                last_save = time.monotonic()
        self.student.to(memory_format=torch.contiguous_format).eval()
        return latest

    def _state(self, step: int, total_steps: int, optimizer: torch.optim.Optimizer, schedule: Any, latest: dict[str, float]) -> bytes:
        """Everything the rest of the run depends on, after ``step`` steps."""
        return to_bytes(
            {
                "step": step,
                "total_steps": total_steps,
                "method": self.config.method,
                "student": self.student.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "rng": self.rng.get_state(),
                "latest": dict(latest),
            }
        )

    def _resume(
        self, checkpoints: Checkpoints | None, optimizer: torch.optim.Optimizer, schedule: Any, total_steps: int, latest: dict[str, float]
    ) -> int:
        """The step to start from: the saved state's (restored here), or 0 without one that fits this run."""
        saved = checkpoints.load(DISTILLATION) if checkpoints is not None else None
        if saved is None:
            return 0
        try:
            state = from_bytes(saved)
        except Exception:  # damaged (it was written whole, so another version's): start afresh rather than fail the job
            return 0
        if state["total_steps"] != total_steps or state["method"] != self.config.method:
            return 0  # another run's state (a changed budget): start afresh rather than mix them
        self.student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        self.rng.set_state(state["rng"])
        latest.update(state["latest"])
        if checkpoints is not None and checkpoints.on_resume is not None:
            checkpoints.on_resume("distilling", int(state["step"]), total_steps)
        return int(state["step"])
