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


# ------------------------------------------------------------------------------------------
# Fashion-world captions (Fashion-MNIST photos): the class name a user types most of the time,
# else a synonym, in varied templates, sometimes with the photo's style (see FASHION_STYLES).
# ------------------------------------------------------------------------------------------

P_CLASS_NAME = 0.5  # the caption uses the class name itself ("sneaker"); else one of its synonyms
P_MENTION_PHOTO_STYLE = 0.35  # a plain photo's caption names one of the plain photo styles
P_MENTION_ALTERED_STYLE = 0.7  # an altered photo's (blurred, noisy, ...) caption names its alteration
P_STYLE_OF_PHRASING = 0.4  # of style mentions: "<object> in the style of <style>", the style dictionary's phrasing

# Noun phrases per class (Fashion-MNIST's label order), each taking "a"/"an": plurals come as "pair of ...".
FASHION_SYNONYMS: dict[str, tuple[str, ...]] = {
    "t-shirt": ("t-shirt", "tee", "top", "t shirt", "tee shirt", "short-sleeved top"),
    "trouser": ("trouser", "pair of trousers", "pair of pants", "pair of jeans", "pants", "trousers"),
    "pullover": ("pullover", "sweater", "jumper", "sweatshirt", "knitted pullover"),
    "dress": ("dress", "summer dress", "gown", "frock"),
    "coat": ("coat", "jacket", "overcoat", "winter coat"),
    "sandal": ("sandal", "pair of sandals", "sandals", "flip-flop", "strappy sandal"),
    "shirt": ("shirt", "button-up shirt", "blouse", "long-sleeved shirt", "collared shirt"),
    "sneaker": ("sneaker", "trainer", "running shoe", "pair of sneakers", "sneakers", "trainers", "sports shoe"),
    "bag": ("bag", "handbag", "purse", "tote bag", "shoulder bag"),
    "ankle boot": ("ankle boot", "boot", "pair of boots", "boots", "ankle boots", "bootie"),
}
# Photo styles every Fashion-MNIST photo shows: small, grey product shots on black.
PLAIN_PHOTO_STYLES: tuple[str, ...] = (
    "a photo",
    "a grayscale photo",
    "a black and white photo",
    "a low-resolution photo",
    "a product photo",
    "a catalogue photo",
)
# Alterations that the teacher's training applies to some photos (bench.train_teacher), with their words.
ALTERED_PHOTO_STYLES: dict[str, tuple[str, ...]] = {
    "blurred": ("a blurry photo", "an out of focus photo"),
    "noisy": ("a noisy photo", "a grainy photo"),
    "dark": ("a dark photo", "an underexposed photo"),
    "faded": ("a faded photo", "a low-contrast photo"),
}
# The style dictionary of the fashion teacher (its config's "styles"): one phrase per look its captions describe.
FASHION_STYLES: tuple[str, ...] = (*PLAIN_PHOTO_STYLES, *(phrases[0] for phrases in ALTERED_PHOTO_STYLES.values()))
FASHION_TEMPLATES: tuple[str, ...] = (
    "a photo of a {obj}.",
    "a {obj}.",
    "a {obj}",
    "a picture of a {obj}",
    "an image of a {obj}",
    "this is a {obj}",
    "a photo of the {obj}",
    "a {obj} on a black background",
    "a close-up photo of a {obj}",
    "a {obj} for sale",
    "a product shot of a {obj}",
    "{obj}",
)


def fashion_caption(class_text: str, alteration: str | None, rng: random.Random) -> str:
    """One caption for a photo of ``class_text`` (a Fashion-MNIST class name); ``alteration`` is a key of
    ALTERED_PHOTO_STYLES or None for an unaltered photo."""
    obj = class_text if rng.random() < P_CLASS_NAME else rng.choice(FASHION_SYNONYMS[class_text])
    with_article = f"{_article(obj)} {obj}"
    if alteration is not None and rng.random() < P_MENTION_ALTERED_STYLE:
        style = rng.choice(ALTERED_PHOTO_STYLES[alteration])
    elif alteration is None and rng.random() < P_MENTION_PHOTO_STYLE:
        style = rng.choice(PLAIN_PHOTO_STYLES)
    else:
        style = None
    if style is None:
        template = rng.choice(FASHION_TEMPLATES)
        text = template.format(obj=obj) if template == "{obj}" else template.format(obj=obj).replace("a " + obj, with_article, 1)
    elif rng.random() < P_STYLE_OF_PHRASING:
        text = f"{with_article} in the style of {style}"
    else:
        text = f"{style} of {with_article}"
    return text.rstrip(".") + ("." if rng.random() < 0.5 else "")


def fashion_captions_for(class_texts: list[str], alterations: list[str | None], rng: random.Random) -> list[str]:
    return [fashion_caption(text, alteration, rng) for text, alteration in zip(class_texts, alterations, strict=True)]
