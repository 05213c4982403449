"""Build open_clip CLIP models from clipforge's JSON teacher configs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from open_clip.model import CLIP
from open_clip.modified_resnet import AttentionPool2d
from torch import nn

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class TeacherConfig:
    name: str  # registry name, e.g. "shapes-mini"
    model: dict[str, Any]  # open_clip CLIP kwargs: embed_dim, vision_cfg, text_cfg
    stem_pool: bool = True  # False drops the ResNet stem's 2x average pool (finer maps for small images)
    image_mean: tuple[float, float, float] = OPENAI_MEAN  # per-channel normalisation mean
    image_std: tuple[float, float, float] = OPENAI_STD  # per-channel normalisation std
    description: str = ""  # one line for listings
    extra: dict[str, Any] = field(default_factory=dict)  # anything else in the file, kept verbatim

    @classmethod
    def from_file(cls, path: str | Path) -> TeacherConfig:
        raw = json.loads(Path(path).read_text())
        known = {"name", "model", "stem_pool", "image_mean", "image_std", "description"}
        return cls(
            name=raw["name"],
            model=raw["model"],
            stem_pool=raw.get("stem_pool", True),
            image_mean=tuple(raw.get("image_mean", OPENAI_MEAN)),
            image_std=tuple(raw.get("image_std", OPENAI_STD)),
            description=raw.get("description", ""),
            extra={k: v for k, v in raw.items() if k not in known},
        )

    @property
    def image_size(self) -> int:
        return int(self.model["vision_cfg"]["image_size"])

    @property
    def context_length(self) -> int:
        return int(self.model["text_cfg"].get("context_length", 77))


def build_clip(config: TeacherConfig) -> CLIP:
    """An untrained open_clip CLIP for ``config`` (weights are loaded by the caller)."""
    model = CLIP(**config.model)
    if not config.stem_pool:
        visual = model.visual
        if not hasattr(visual, "attnpool"):
            raise ValueError("stem_pool=false applies to ModifiedResNet image towers only")
        visual.avgpool = nn.Identity()
        pool = visual.attnpool
        # Without the stem pool the final feature map is twice as wide: rebuild the attention
        # pool's positional embedding for it.
        visual.attnpool = AttentionPool2d(config.image_size // 16, pool.k_proj.in_features, pool.num_heads, pool.c_proj.out_features)
    return model
