"""Logo classes the project can render: invented emblems and wordmarks, and brand icons.

No real hate symbols anywhere: the ``prohibited`` demo marks are invented shapes. Brand icons
come from the ``simplepycons`` package (its own licence/trademark terms apply; used here for
training, evaluation and the demo gallery only, nothing is redistributed beyond the package).
"""
from __future__ import annotations

import functools
import glob
import io
import math
import random
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFont

SHAPES = ("circle", "square", "hexagon", "shield", "triangle", "diamond", "octagon", "ring")
GLYPHS = ("leaf", "check", "drop", "tree", "sun", "wave", "star", "plus", "bolt", "arrows",
          "eye", "spiral", "trident", "bars", "crescent", "none")
_SYLLABLES = ("ka", "lo", "ve", "ri", "to", "na", "mi", "su", "el", "or", "an", "ex", "qu", "za",
              "po", "li", "ne", "ta", "ro", "mu", "vi", "sa", "de", "co", "ra", "bo", "fi", "gu")


@dataclass(frozen=True)
class Mark:
    """One logo class. ``kind``: 'emblem' (shape + glyph + optional text), 'wordmark', 'icon'."""
    key: str
    kind: str
    shape: str = ""
    glyph: str = ""
    text: str = ""
    font: str = ""
    colors: tuple = ((30, 30, 30), (255, 255, 255))
    extra: dict = field(default_factory=dict, compare=False, hash=False)


@functools.lru_cache(maxsize=1)
def fonts() -> list[str]:
    """TrueType fonts available without network: DejaVu (Debian) and matplotlib's bundle."""
    found = sorted(glob.glob("/usr/share/fonts/truetype/**/*.ttf", recursive=True))
    try:
        import matplotlib
        found += sorted(glob.glob(matplotlib.get_data_path() + "/fonts/ttf/*.ttf"))
    except ImportError:
        pass
    found = [f for f in found if "Math" not in f and "cmex" not in f.lower() and "cmsy" not in f.lower()]
    if not found:
        raise RuntimeError("no TrueType fonts found (install fonts-dejavu-core)")
    return found


@functools.lru_cache(maxsize=8)
def extra_fonts(dirs: tuple[str, ...]) -> list[str]:
    """Fonts found under ``dirs`` (e.g. Debian font packages unpacked by ``make fonts``) that
    draw Latin letters: fonts for other scripts, or with empty/identical glyphs, are left out."""
    import os
    found = []
    for d in dirs:
        if not os.path.isdir(d):
            raise FileNotFoundError(f"font folder {d!r} not found (make fonts unpacks Debian font packages there)")
        for root, _, files in sorted(os.walk(d)):
            found += [os.path.join(root, f) for f in sorted(files)
                      if f.lower().endswith((".ttf", ".otf")) and "noto" not in root.lower()]
    ok = []
    for path in found:
        try:
            f = ImageFont.truetype(path, 32)
            masks = [bytes(f.getmask(c)) for c in ("K", "a", "\ue000")]
            if masks[0] and masks[1] and masks[0] != masks[1] and masks[0] != masks[2]:
                ok.append(path)
        except OSError:
            continue
    return ok


def refont(marks: list[Mark], font_list: list[str], seed: int) -> list[Mark]:
    """The same classes with their text set in fonts drawn from ``font_list`` (one per class;
    the sub-brands of one range keep one font, as in ``wordmark_family``)."""
    import dataclasses
    rng = random.Random(seed)
    by_design: dict[str, str] = {}
    out = []
    for m in marks:
        if m.kind == "icon" or not m.text:
            out.append(m)
            continue
        design = m.extra.get("design")
        font = by_design.setdefault(design, rng.choice(font_list)) if design else rng.choice(font_list)
        out.append(dataclasses.replace(m, font=font))
    return out


@functools.lru_cache(maxsize=256)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


class RendererMissing(RuntimeError):
    """The brand-icon renderer (``simplepycons``, ``resvg-py``) is not installed: it is part of the
    train extra, since only sample data and training draw marks; the sweep and ``gallery build`` never do."""


def renderer():
    """(simplepycons, resvg_py), or a clear error naming the extra that installs them."""
    try:
        import resvg_py
        import simplepycons
    except ImportError as e:
        raise RendererMissing(f"drawing sample or training logos needs {e.name or 'the renderer'}, which is "
                              "in the train extra: pip install 'logoscan[train]' (the sweep and gallery "
                              "build do not need it)") from None
    return simplepycons, resvg_py


def brand_slugs() -> list[str]:
    simplepycons, _ = renderer()
    return sorted(simplepycons.all_icons._all_names)


def brand_mark(slug: str) -> Mark:
    simplepycons, _ = renderer()
    icon = simplepycons.all_icons[slug]
    hexc = (icon.primary_color or "#000000").lstrip("#")
    rgb = tuple(int(hexc[i:i + 2], 16) for i in (0, 2, 4))
    return Mark(key=f"brand-{slug}", kind="icon", text=icon.title, colors=(rgb, (255, 255, 255)),
                extra={"slug": slug})


def random_word(rng: random.Random, n: int | None = None) -> str:
    n = n or rng.randint(2, 4)
    return "".join(rng.choice(_SYLLABLES) for _ in range(n)).capitalize()


def random_mark(rng: random.Random, key: str) -> Mark:
    """A random invented class: an emblem (maybe with a word) or a wordmark."""
    palette = [(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(2)]
    if rng.random() < 0.3:
        return Mark(key=key, kind="wordmark", text=random_word(rng).upper() if rng.random() < 0.5
                    else random_word(rng), font=rng.choice(fonts()), colors=tuple(palette),
                    extra={"underline": rng.random() < 0.3, "boxed": rng.random() < 0.3})
    text = random_word(rng, rng.randint(1, 3)).upper() if rng.random() < 0.4 else ""
    return Mark(key=key, kind="emblem", shape=rng.choice(SHAPES), glyph=rng.choice(GLYPHS),
                text=text, font=rng.choice(fonts()), colors=tuple(palette),
                extra={"outline": rng.random() < 0.35})


_SUFFIXES = ("Fresh", "Kids", "Plus", "Pro", "Bio", "Home", "Go", "Max", "Lite", "Farms", "Baked Beans",
             "Sport", "Originals", "Pay", "Music")


def _variant(rng: random.Random, word: str) -> tuple[str, bool]:
    """A name close to ``word`` in text → (name, same_range). A sub-brand ("Heinz" → "Heinz Baked
    Beans") keeps the range's lettering; a look-alike name ("Heinz" → "Heineken": one letter
    changed, a syllable added) belongs to another company with a design of its own."""
    how = rng.random()
    if how < 0.35:
        i = rng.randrange(len(word))
        c = rng.choice("aeiou" if word[i].lower() in "aeiou" else "bcdfgklmnprstvz")
        c = c.upper() if word[i].isupper() else c
        return word[:i] + c + word[i + 1:], False
    if how < 0.65:
        syl = rng.choice(_SYLLABLES)
        return word + (syl.upper() if word.isupper() else syl), False
    return f"{word} {rng.choice(_SUFFIXES)}", True


def _palette(rng: random.Random) -> tuple:
    return tuple((rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(2))


def wordmark_family(rng: random.Random, key: str, n: int) -> list[Mark]:
    """``n`` wordmark classes whose names are text-similar: a base name, sub-brands of it set in
    the same font, palette and style ("Heinz", "Heinz Baked Beans"), and look-alike names of other
    makers with their own design ("Heineken"). ``extra['design']`` groups one lettering."""
    base = random_word(rng, rng.randint(2, 3))
    base = base.upper() if rng.random() < 0.4 else base
    names, owner = [base], [0]  # owner: index of the class whose design a name uses
    for _ in range(50 * n):
        if len(names) == n:
            break
        parent = 0 if rng.random() < 0.7 else rng.randrange(len(names))
        v, same = _variant(rng, names[parent])
        if v.lower() not in {x.lower() for x in names}:
            owner.append(owner[parent] if same else len(names))
            names.append(v)
    designs = {}
    out = []
    for i, (t, o) in enumerate(zip(names, owner)):
        if o not in designs:
            designs[o] = (rng.choice(fonts()), _palette(rng),
                          {"underline": rng.random() < 0.3, "boxed": rng.random() < 0.3})
        font, palette, style = designs[o]
        out.append(Mark(key=f"{key}-{i}", kind="wordmark", text=t, font=font, colors=palette,
                        extra={**style, "family": key, "design": f"{key}-{o}"}))
    return out


def class_name(m: Mark) -> str:
    """The text a class reads as (brand title, wordmark text, emblem caption; '' for none)."""
    return m.text


# ---------------------------------------------------------------- rendering

def _poly(n, cx, cy, r, rot=0.0):
    return [(cx + r * math.cos(rot + 2 * math.pi * i / n), cy + r * math.sin(rot + 2 * math.pi * i / n))
            for i in range(n)]


def _shape(d: ImageDraw.ImageDraw, shape: str, s: int, fill, outline: bool):
    c, r = s / 2, s * 0.46
    w = max(int(s * 0.07), 2)
    kw = dict(outline=fill, width=w) if outline else dict(fill=fill)
    if shape in ("circle", "ring"):
        if shape == "ring":
            kw = dict(outline=fill, width=max(int(s * 0.12), 3))
        d.ellipse([c - r, c - r, c + r, c + r], **kw)
    elif shape == "square":
        d.rounded_rectangle([c - r, c - r, c + r, c + r], radius=s * 0.12, **kw)
    elif shape == "hexagon":
        d.polygon(_poly(6, c, c, r, math.pi / 6), **kw)
    elif shape == "octagon":
        d.polygon(_poly(8, c, c, r, math.pi / 8), **kw)
    elif shape == "triangle":
        d.polygon(_poly(3, c, c * 1.15, r * 1.1, -math.pi / 2), **kw)
    elif shape == "diamond":
        d.polygon(_poly(4, c, c, r, 0), **kw)
    elif shape == "shield":
        pts = [(c - r, c - r), (c + r, c - r), (c + r, c), (c, c + r), (c - r, c)]
        d.polygon(pts, **kw)


def _glyph(d: ImageDraw.ImageDraw, glyph: str, s: int, fill):
    c, r = s / 2, s * 0.24
    w = max(int(s * 0.06), 2)
    if glyph == "leaf":
        d.ellipse([c - r * 0.55, c - r, c + r * 0.55, c + r], fill=fill)
        d.line([(c, c - r * 0.9), (c, c + r * 1.3)], fill=(0, 0, 0, 0) if fill[3] else fill, width=w // 2 + 1)
    elif glyph == "check":
        d.line([(c - r, c), (c - r * 0.2, c + r * 0.8), (c + r, c - r * 0.8)], fill=fill, width=w * 2)
    elif glyph == "drop":
        d.ellipse([c - r * 0.7, c - r * 0.2, c + r * 0.7, c + r * 1.1], fill=fill)
        d.polygon([(c, c - r * 1.1), (c - r * 0.62, c + r * 0.2), (c + r * 0.62, c + r * 0.2)], fill=fill)
    elif glyph == "tree":
        d.polygon([(c, c - r), (c - r, c + r * 0.4), (c + r, c + r * 0.4)], fill=fill)
        d.rectangle([c - r * 0.15, c + r * 0.4, c + r * 0.15, c + r], fill=fill)
    elif glyph == "sun":
        d.ellipse([c - r * 0.5, c - r * 0.5, c + r * 0.5, c + r * 0.5], fill=fill)
        for i in range(8):
            a = i * math.pi / 4
            d.line([(c + r * 0.7 * math.cos(a), c + r * 0.7 * math.sin(a)),
                    (c + r * 1.1 * math.cos(a), c + r * 1.1 * math.sin(a))], fill=fill, width=w)
    elif glyph == "wave":
        for k in (-0.5, 0.0, 0.5):
            pts = [(c - r + 2 * r * t / 20, c + k * r + 0.25 * r * math.sin(t / 20 * 2 * math.pi * 1.5))
                   for t in range(21)]
            d.line(pts, fill=fill, width=w)
    elif glyph == "star":
        pts = []
        for i in range(10):
            rr = r if i % 2 == 0 else r * 0.45
            a = -math.pi / 2 + i * math.pi / 5
            pts.append((c + rr * math.cos(a), c + rr * math.sin(a)))
        d.polygon(pts, fill=fill)
    elif glyph == "plus":
        d.rectangle([c - r * 0.25, c - r, c + r * 0.25, c + r], fill=fill)
        d.rectangle([c - r, c - r * 0.25, c + r, c + r * 0.25], fill=fill)
    elif glyph == "bolt":
        d.polygon([(c + r * 0.2, c - r), (c - r * 0.6, c + r * 0.15), (c, c + r * 0.15),
                   (c - r * 0.2, c + r), (c + r * 0.6, c - r * 0.15), (c, c - r * 0.15)], fill=fill)
    elif glyph == "arrows":
        for k in range(3):
            a0 = k * 120
            d.arc([c - r, c - r, c + r, c + r], a0 + 10, a0 + 95, fill=fill, width=w)
            a = math.radians(a0 + 95)
            tip = (c + r * math.cos(a), c + r * math.sin(a))
            d.polygon([tip, (tip[0] - r * 0.35 * math.cos(a - 0.9), tip[1] - r * 0.35 * math.sin(a - 0.9)),
                       (tip[0] - r * 0.35 * math.cos(a + 0.9), tip[1] - r * 0.35 * math.sin(a + 0.9))],
                      fill=fill)
    elif glyph == "eye":
        d.ellipse([c - r, c - r * 0.5, c + r, c + r * 0.5], outline=fill, width=w)
        d.ellipse([c - r * 0.3, c - r * 0.3, c + r * 0.3, c + r * 0.3], fill=fill)
    elif glyph == "spiral":
        pts = [(c + (r * t / 60) * math.cos(t / 60 * 6 * math.pi), c + (r * t / 60) * math.sin(t / 60 * 6 * math.pi))
               for t in range(61)]
        d.line(pts, fill=fill, width=w)
    elif glyph == "trident":
        d.line([(c, c - r), (c, c + r)], fill=fill, width=w)
        d.line([(c - r * 0.7, c - r), (c - r * 0.7, c - r * 0.1), (c + r * 0.7, c - r * 0.1), (c + r * 0.7, c - r)],
               fill=fill, width=w)
    elif glyph == "bars":
        for k in range(4):
            x = c - r + k * r * 0.6
            d.rectangle([x, c + r - (k + 1) * r * 0.45, x + r * 0.35, c + r], fill=fill)
    elif glyph == "crescent":
        d.ellipse([c - r, c - r, c + r, c + r], fill=fill)
        d.ellipse([c - r * 0.4, c - r * 1.0, c + r * 1.3, c + r * 0.8], fill=(0, 0, 0, 0))


def _text_image(text: str, font_path: str, height: int, color) -> Image.Image:
    f = _font(font_path, max(height, 6))
    l, t, r, b = f.getbbox(text)
    im = Image.new("RGBA", (max(r - l, 1) + 4, max(b - t, 1) + 4), (0, 0, 0, 0))
    ImageDraw.Draw(im).text((2 - l, 2 - t), text, font=f, fill=color)
    return im


def render(mark: Mark, size: int = 128) -> Image.Image:
    """RGBA rendering of ``mark`` whose longest side is about ``size`` px, transparent background."""
    if mark.kind == "icon":
        simplepycons, resvg_py = renderer()
        svg = simplepycons.all_icons[mark.extra["slug"]].raw_svg
        png = resvg_py.svg_to_bytes(svg_string=svg, width=size, height=size)
        alpha = Image.open(io.BytesIO(bytes(png))).getchannel("A")
        im = Image.new("RGBA", alpha.size, mark.colors[0] + (255,))
        im.putalpha(alpha)
        return im
    fg, bg = (tuple(mark.colors[0]) + (255,)), (tuple(mark.colors[1]) + (255,))
    if mark.kind == "wordmark":
        im = _text_image(mark.text, mark.font, size // 3, fg)
        if mark.extra.get("underline"):
            bar = max(size // 12, 3)
            pad = Image.new("RGBA", (im.width, im.height + bar), (0, 0, 0, 0))
            pad.paste(im, (0, 0))
            ImageDraw.Draw(pad).rectangle([0, im.height + 1, im.width, pad.height - 1], fill=fg)
            im = pad
        if mark.extra.get("boxed"):
            m = max(size // 12, 2)
            box = Image.new("RGBA", (im.width + 2 * m, im.height + 2 * m), (0, 0, 0, 0))
            ImageDraw.Draw(box).rounded_rectangle([0, 0, box.width - 1, box.height - 1], radius=m,
                                                  outline=fg, width=max(size // 40, 2))
            box.alpha_composite(im, (m, m))
            im = box
        return _fit(im, size)
    s = size * 4
    im = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    outline = mark.extra.get("outline", False) or mark.shape == "ring"
    _shape(d, mark.shape, s, fg, outline)
    _glyph(d, mark.glyph, s, fg if outline else bg)
    im = im.resize((size, size), Image.LANCZOS)
    if mark.text:
        t = _text_image(mark.text, mark.font, size // 5, fg)
        t = _fit(t, size)
        out = Image.new("RGBA", (size, size + t.height + size // 16), (0, 0, 0, 0))
        out.alpha_composite(im, (0, 0))
        out.alpha_composite(t, ((size - t.width) // 2, size + size // 16))
        im = _fit(out, size)
    return im


def _fit(im: Image.Image, size: int) -> Image.Image:
    k = size / max(im.size)
    return im.resize((max(int(im.width * k), 1), max(int(im.height * k), 1)), Image.LANCZOS)


def on_white(im: Image.Image) -> Image.Image:
    bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
    bg.alpha_composite(im)
    return bg.convert("RGB")


# ---------------------------------------------------------------- the demo gallery

# (logo_id, label, category, mark) — invented sustainability and prohibited marks; brand icons
# from simplepycons. Their shape/glyph combinations are excluded from embedder/detector training.
_DEMO_INVENTED = [
    ("eco-leaf", "sustainability", dict(shape="circle", glyph="leaf", text="ECO", colors=((34, 139, 34), (255, 255, 255)))),
    ("recycle-loop", "sustainability", dict(shape="ring", glyph="arrows", text="", colors=((0, 110, 60), (255, 255, 255)))),
    ("fair-sun", "sustainability", dict(shape="hexagon", glyph="sun", text="FAIR", colors=((0, 90, 160), (255, 230, 0)))),
    ("aqua-drop", "sustainability", dict(shape="shield", glyph="drop", text="", colors=((0, 120, 200), (255, 255, 255)))),
    ("banned-spiral", "prohibited", dict(shape="octagon", glyph="spiral", text="", colors=((170, 0, 0), (255, 255, 255)))),
    ("banned-trident", "prohibited", dict(shape="triangle", glyph="trident", text="", colors=((20, 20, 20), (255, 255, 255)))),
    ("banned-eye", "prohibited", dict(shape="diamond", glyph="eye", text="", colors=((90, 0, 120), (255, 255, 255)))),
]
DEMO_BRANDS = ("spotify", "nasa", "adidas", "shell", "mastercard")
DEMO_FONT = "DejaVuSans-Bold.ttf"


def demo_gallery() -> list[tuple[str, str, str, Mark]]:
    font = next((f for f in fonts() if f.endswith(DEMO_FONT)), fonts()[0])
    out = []
    for label, category, kw in _DEMO_INVENTED:
        m = Mark(key=label, kind="emblem", font=font, extra={"outline": kw["shape"] == "ring"}, **kw)
        out.append((f"ref-{label}", label, category, m))
    slugs = set(brand_slugs())
    for slug in DEMO_BRANDS:
        if slug in slugs:
            out.append((f"ref-{slug}", slug, "brand", brand_mark(slug)))
    return out


def demo_exclusions() -> tuple[set[tuple[str, str]], set[str]]:
    """(shape, glyph) pairs and brand slugs reserved for the demo: training never sees them."""
    return ({(kw["shape"], kw["glyph"]) for _, _, kw in _DEMO_INVENTED}, set(DEMO_BRANDS))


def training_marks(seed: int, n_invented: int, n_brands: int | None, holdout: float = 0.0,
                   n_families: int = 0) -> tuple[list[Mark], list[Mark]]:
    """(train, held-out) classes for model training: invented marks plus brand icons, with the
    demo's marks excluded. ``holdout`` is the share of brands (and of the ``n_families``
    text-similar wordmark families, whole families) kept out of training. With ``n_families=0``
    the result is what it was before families existed (same random stream)."""
    rng = random.Random(seed)
    pairs, demo_brands = demo_exclusions()
    invented = []
    while len(invented) < n_invented:
        m = random_mark(rng, f"inv-{len(invented):05d}")
        if (m.shape, m.glyph) in pairs:
            continue
        invented.append(m)
    slugs = [s for s in brand_slugs() if s not in demo_brands]
    rng.shuffle(slugs)
    if n_brands is not None:
        slugs = slugs[:n_brands]
    n_hold = int(len(slugs) * holdout)
    brands = [brand_mark(s) for s in slugs]
    train, held = invented + brands[n_hold:], brands[:n_hold]
    if n_families:
        frng = random.Random(seed + 777)
        fams = [wordmark_family(frng, f"fam-{i:04d}", frng.randint(2, 4)) for i in range(n_families)]
        n_fh = int(round(n_families * holdout))
        train += [m for f in fams[n_fh:] for m in f]
        held += [m for f in fams[:n_fh] for m in f]
    return train, held


def design(m: Mark) -> tuple:
    """What makes an invented mark a different logo: colour and font are colourway/augmentation,
    so two emblems with the same shape, glyph and style are one design."""
    if m.kind == "wordmark":
        return ("wordmark", m.text.lower())
    return ("emblem", m.shape, m.glyph, bool(m.text), m.extra.get("outline", False))


def unseen_invented(seed: int, n: int) -> list[Mark]:
    """Invented marks from a generator seed never used for training, one per design (demo
    designs excluded), so that no two of them are the same logo in another colour."""
    rng = random.Random(seed + 424242)
    pairs, _ = demo_exclusions()
    out, seen = [], set()
    for _ in range(100 * n):
        m = random_mark(rng, f"unseen-{len(out)}")
        if (m.shape, m.glyph) in pairs or design(m) in seen:
            continue
        seen.add(design(m))
        out.append(m)
        if len(out) == n:
            break
    return out
