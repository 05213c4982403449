"""Captions for shapes-world scenes, in varied natural phrasings.

Like web alt-text, captions name the main object almost always, bind its colour to it most of
the time, mention style and background now and then, and seldom mention the distractor glyph.
Colour must be bound to shape often enough for compositional prompts ("a blue star") to work.
"""

from __future__ import annotations

import random

from bench.world import BACKGROUNDS, COLOUR_NAMES, SHAPES, STYLES, Scenes

# Probabilities of the caption grammar; chosen so the teacher learns shape, colour and their
# binding (see the teacher card for the measured effect).
P_NAME_SHAPE = 0.95  # the caption names the shape
P_BIND_COLOUR = 0.75  # ... and its colour ("a red circle")
P_MENTION_STYLE = 0.35
P_MENTION_BACKGROUND = 0.3
P_MENTION_SIZE = 0.1
P_MENTION_DISTRACTOR = 0.05  # of images that contain the glyph

STYLE_PREFIXES: dict[str, tuple[str, ...]] = {
    "filled": ("a drawing of", "a flat drawing of", "a solid", "a picture of"),
    "outline": ("an outline drawing of", "a line drawing of", "an outline of", "a sketch of"),
    "blurred": ("a blurry photo of", "a blurred picture of", "an out of focus photo of"),
    "noisy": ("a noisy photo of", "a grainy picture of", "a noisy image of"),
}
# Nouns for "<object> in the style of <style>", the phrasing style-dictionary prompts use.
STYLE_NOUNS: dict[str, tuple[str, ...]] = {
    "filled": ("a flat drawing", "a solid painting"),
    "outline": ("an outline drawing", "a line drawing"),
    "blurred": ("a blurry photo", "an out of focus photo"),
    "noisy": ("a noisy photo", "a grainy picture"),
}
BACKGROUND_PHRASES: dict[str, tuple[str, ...]] = {
    "plain": ("on a plain background", "on a grey background"),
    "noise": ("on a noisy background", "on a mottled background"),
    "stripes": ("on a striped background", "on stripes"),
    "gradient": ("on a gradient background", "on a gradient"),
    "checker": ("on a checkered background", "on a checkerboard"),
}
GENERIC_TEMPLATES: tuple[str, ...] = (
    "a photo of a {obj}.",
    "a {obj}.",
    "a picture of a {obj}",
    "an image of a {obj}",
    "a {obj}",
    "this is a {obj}",
    "there is a {obj} in the picture",
)
DISTRACTOR_PHRASES: tuple[str, ...] = ("next to a smiley face", "with a smiley in the corner")

# Every word a caption can contain; the `ambiguous` task's class names must avoid them.
CAPTION_WORDS_EXTRA = ("shape", "object", "small", "large", "big", "tiny", "in", "the", "style", "of", "and")


def _article(phrase: str) -> str:
    return "an" if phrase[0] in "aeiou" else "a"


def _object_phrase(shape: str, colour: str, size: float, rng: random.Random) -> str:
    size_word = ""
    if rng.random() < P_MENTION_SIZE:
        size_word = rng.choice(("small", "tiny")) if size < 0.24 else rng.choice(("large", "big"))
    if rng.random() < P_NAME_SHAPE:
        words = [colour, shape] if rng.random() < P_BIND_COLOUR else [shape]
    else:
        words = [colour, rng.choice(("shape", "object"))]
    if size_word:
        words.insert(0, size_word)
    return " ".join(words)


def caption(shape: str, colour: str, style: str, background: str, size: float, distractor: bool, rng: random.Random) -> str:
    """One caption for one scene's factors."""
    obj = _object_phrase(shape, colour, size, rng)
    with_article = f"{_article(obj)} {obj}"
    roll = rng.random()
    if roll < P_MENTION_STYLE * 0.6:
        prefix = rng.choice(STYLE_PREFIXES[style])
        text = f"{prefix} {obj}" if prefix.endswith("solid") else f"{prefix} {with_article}"
    elif roll < P_MENTION_STYLE:
        text = f"{with_article} in the style of {rng.choice(STYLE_NOUNS[style])}"
    else:
        text = rng.choice(GENERIC_TEMPLATES).format(obj=obj)
        text = text.replace("a " + obj, with_article, 1)
    text = text.rstrip(".")
    if rng.random() < P_MENTION_BACKGROUND:
        text += " " + rng.choice(BACKGROUND_PHRASES[background])
    if distractor and rng.random() < P_MENTION_DISTRACTOR:
        text += " " + rng.choice(DISTRACTOR_PHRASES)
    return text + ("." if rng.random() < 0.5 else "")


def captions_for(scenes: Scenes, rng: random.Random) -> list[str]:
    return [
        caption(
            SHAPES[int(s)],
            COLOUR_NAMES[int(c)],
            STYLES[int(st)],
            BACKGROUNDS[int(b)],
            float(sz),
            bool(d),
            rng,
        )
        for s, c, st, b, sz, d in zip(
            scenes.shape, scenes.colour, scenes.style, scenes.background, scenes.size, scenes.has_distractor, strict=True
        )
    ]


def caption_vocabulary() -> set[str]:
    """All words that any caption can contain (lower case, punctuation stripped)."""
    words: set[str] = set(SHAPES) | set(COLOUR_NAMES) | set(CAPTION_WORDS_EXTRA)
    phrases = [*GENERIC_TEMPLATES, *DISTRACTOR_PHRASES]
    for group in (STYLE_PREFIXES, STYLE_NOUNS, BACKGROUND_PHRASES):
        for options in group.values():
            phrases.extend(options)
    for phrase in phrases:
        words.update(phrase.replace("{obj}", "").replace(".", "").split())
    words.update({"a", "an"})
    return words
