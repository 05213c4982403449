"""Unlabelled images of a world as PNG files, for `clipforge decoders train` and `clipforge priors build`: a world's train
images, optionally without some classes (the images a prior is built from when it is meant never to have seen them).

    python -m bench.export_images --world fashion --out runs/fashion-images/all
    python -m bench.export_images --world fashion --without trouser,bag,"ankle boot" --out runs/fashion-images/seen7
    python -m bench.export_images --world shapes --without star,heart,ring --images 32000 --out runs/shapes-images/seen5
    python -m bench.export_images --world fashion --images 2048 --out runs/pools/fashion   # a user's unlabelled photos

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


FASHION_SUBSET_SEED = 778_000  # the seeded subset of train photos when fewer than all are asked for


def export_fashion(out: Path, without: set[str], images: int | None = None) -> int:
    from bench.fashion import FASHION_CLASSES, load_fashion

    train = load_fashion().split("train")
    order = torch.arange(len(train.labels))
    if images is not None and images < len(order):
        order = torch.randperm(len(order), generator=torch.Generator().manual_seed(FASHION_SUBSET_SEED))
    count = 0
    for index in order.tolist():
        image, label = train.images[index], train.labels[index]
        if FASHION_CLASSES[int(label)] in without:
            continue
        if images is not None and count >= images:
            break
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
    parser.add_argument("--images", type=int, default=None, help="shapes: renders (32,000); fashion: a seeded subset of train")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    without = {name.strip() for name in args.without.split(",") if name.strip()}
    args.out.mkdir(parents=True, exist_ok=True)
    if args.world == "fashion":
        count = export_fashion(args.out, without, args.images)
    else:
        count = export_shapes(args.out, without, args.images or 32000)
    print(f"{count} images in {args.out}")


if __name__ == "__main__":
    main()
