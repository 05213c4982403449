"""Unlabelled images of a world as PNG files, for `clipforge decoders train` and `clipforge priors build`: a world's train
images, optionally without some classes (the images a prior is built from when it is meant never to have seen them).

    python -m bench.export_images --world fashion --out runs/fashion-images/all
    python -m bench.export_images --world fashion --without trouser,bag,"ankle boot" --out runs/fashion-images/seen7
    python -m bench.export_images --world shapes --without star,heart,ring --images 32000 --out runs/shapes-images/seen5

Fashion: every photo of our train split (bench.fashion; never val, examples or test), 28x28 grey. Shapes: freshly
rendered 32 px scenes (the decoder's own training distribution: random shapes, colours, styles, backgrounds, the
distractor glyph in 80 %), from seeds that no task split uses.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image

SHAPES_SEED = 777_000  # batch b of the shapes export is rendered from seed SHAPES_SEED + b
SHAPES_BATCH = 32
DISTRACTOR_PROB = 0.8  # as the decoder's and the teacher's training images


def export_fashion(out: Path, without: set[str]) -> int:
    from bench.fashion import FASHION_CLASSES, load_fashion

    train = load_fashion().split("train")
    count = 0
    for index, (image, label) in enumerate(zip(train.images, train.labels, strict=True)):
        if FASHION_CLASSES[int(label)] in without:
            continue
        Image.fromarray(image.numpy(), mode="L").save(out / f"{index:05d}.png")
        count += 1
    return count


def export_shapes(out: Path, without: set[str], images: int) -> int:
    from bench.world import SHAPES, render, sample_scenes

    keep = [i for i, name in enumerate(SHAPES) if name not in without]
    count = 0
    for batch in range(-(-images // SHAPES_BATCH)):
        g = torch.Generator().manual_seed(SHAPES_SEED + batch)
        pixels = render(sample_scenes(SHAPES_BATCH, g, shapes=keep, distractor_prob=DISTRACTOR_PROB), 32, g)
        for array in (pixels.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy():
            if count < images:
                Image.fromarray(array).save(out / f"{count:05d}.png")
                count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", choices=("fashion", "shapes"), required=True)
    parser.add_argument("--without", default="", help="comma-separated class names to leave out")
    parser.add_argument("--images", type=int, default=32000, help="shapes: how many renders")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    without = {name.strip() for name in args.without.split(",") if name.strip()}
    args.out.mkdir(parents=True, exist_ok=True)
    count = export_fashion(args.out, without) if args.world == "fashion" else export_shapes(args.out, without, args.images)
    print(f"{count} images in {args.out}")


if __name__ == "__main__":
    main()
