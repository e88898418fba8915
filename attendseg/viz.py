"""Pictures of groundings: mask overlays with a coloured caption, per-token heatmap grids, sheets.

Everything renders off-screen into :class:`PIL.Image.Image` (RGB); no display and no pyplot
backend are needed. matplotlib supplies the colour maps and the DejaVu Sans fonts it ships;
compositing is done in numpy/PIL so masks are tinted pixel-exactly at the image's own size.

Colours are deterministic: phrase ``i`` gets ``PALETTE[i % len(PALETTE)]``.

Image inputs may be ``[H, W, 3]`` uint8 arrays (also ``[H, W]`` grey, ``[H, W, 4]`` RGBA, or float
in [0, 1]) or PIL images. Coordinates follow :mod:`attendseg.views`: ``(x, y)`` pixels, x right,
y down; masks and maps are ``[H, W]`` in the original image frame.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .results import Grounding

__all__ = ["PALETTE", "color_for", "overlay", "heatmap_grid", "contact_sheet", "to_rgb_array", "zoom"]

# Distinct, saturated colours (after Sasha Trubetskoy's list), in a fixed order.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),  # red
    (60, 180, 75),  # green
    (0, 130, 200),  # blue
    (245, 130, 48),  # orange
    (145, 30, 180),  # purple
    (70, 240, 240),  # cyan
    (240, 50, 230),  # magenta
    (210, 245, 60),  # lime
    (0, 128, 128),  # teal
    (255, 225, 25),  # yellow
    (170, 110, 40),  # brown
    (250, 190, 212),  # pink
)

_TEXT = (35, 35, 35)
_BACKGROUND = (255, 255, 255)


def color_for(index: int) -> tuple[int, int, int]:
    """The palette colour of phrase ``index``."""
    return PALETTE[index % len(PALETTE)]


def _text_color(rgb: tuple[int, int, int], max_luminance: float = 0.45) -> tuple[int, int, int]:
    """``rgb`` darkened (hue kept) until it reads on white."""
    lum = (0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]) / 255.0
    if lum <= max_luminance:
        return rgb
    f = max_luminance / lum
    return tuple(int(round(c * f)) for c in rgb)


@lru_cache(maxsize=32)
def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    import matplotlib

    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name
    try:
        return ImageFont.truetype(str(path), size)
    except OSError:  # pragma: no cover - matplotlib always ships DejaVu
        return ImageFont.load_default(size)


def to_rgb_array(image) -> np.ndarray:
    """``[H, W, 3]`` uint8 from a PIL image or an array (grey, RGB, RGBA; uint8 or float 0–1)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an image [H, W, 3], got shape {a.shape}")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    a = a[..., :3]
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating):
            a = np.clip(np.nan_to_num(a) * (255.0 if a.max(initial=0) <= 1.0 else 1.0), 0, 255).round()
        elif a.dtype == np.uint16:
            a = a / 257.0
        a = np.clip(a, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(a)


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


# --------------------------------------------------------------------------- caption layout


def _caption_segments(answer: str, spans: Sequence[tuple[int, int, int]]) -> list[tuple[str, int | None]]:
    """Split ``answer`` into ``(text, phrase index or None)`` runs; overlapping spans: first wins."""
    segs: list[tuple[str, int | None]] = []
    pos = 0
    for start, end, idx in sorted(spans):
        if start < pos or start >= end or end > len(answer):
            continue
        if start > pos:
            segs.append((answer[pos:start], None))
        segs.append((answer[start:end], idx))
        pos = end
    if pos < len(answer):
        segs.append((answer[pos:], None))
    return segs


def _layout(segs, width: int, fs: int, pad: int):
    """Greedy word wrap. Returns lines of ``(x, text, phrase index or None)`` pieces.

    Text that touches (no space between) wraps as one word even across phrase boundaries, so a
    line never starts with the comma or full stop after a phrase."""
    pieces = [(tok, idx) for text, idx in segs for tok in re.findall(r"\s+|\S+", text)]
    units: list[list[tuple[str, int | None]]] = []  # whitespace runs and glued non-space pieces
    for tok, idx in pieces:
        if not tok.isspace() and units and not units[-1][-1][0].isspace():
            units[-1].append((tok, idx))
        else:
            units.append([(tok, idx)])
    lines: list[list[tuple[int, str, int | None]]] = [[]]
    x = pad
    right = width - pad
    for unit in units:
        tok, idx = unit[0]
        if tok.isspace():
            font = _font(fs, bold=idx is not None)
            for _ in range(tok.count("\n")):
                lines.append([])
                x = pad
            if x > pad and "\n" not in tok:
                if idx is not None:  # a space inside a phrase: keep its underline continuous
                    lines[-1].append((x, " ", idx))
                x += int(round(font.getlength(" ")))
            continue
        w = sum(_font(fs, bold=i is not None).getlength(t) for t, i in unit)
        if x + w > right and x > pad:  # wrap the whole word, then place it on a fresh line
            if lines[-1] and lines[-1][-1][1] == " ":
                lines[-1].pop()  # no dangling underlined space at the line's end
            lines.append([])
            x = pad
        for tok, idx in unit:
            font = _font(fs, bold=idx is not None)
            while tok:
                w = font.getlength(tok)
                if x + w <= right or x == pad and len(tok) == 1:
                    lines[-1].append((x, tok, idx))
                    x += int(math.ceil(w))
                    break
                # wider than what is left of a line: cut it
                n = max(1, len(tok) - 1)
                while n > 1 and font.getlength(tok[:n]) > right - x:
                    n -= 1
                if x > pad and font.getlength(tok[:n]) > right - x:
                    lines.append([])
                    x = pad
                    continue
                lines[-1].append((x, tok[:n], idx))
                tok = tok[n:]
                lines.append([])
                x = pad
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _render_caption(answer: str, spans, width: int) -> Image.Image | None:
    if not answer or not answer.strip() or width < 8:
        return None
    fs = int(min(28, max(11, round(width / 32))))
    pad = max(4, fs // 2)
    line_h = int(round(fs * 1.35))
    lines = _layout(_caption_segments(answer, spans), width, fs, pad)
    if not lines:
        return None
    strip = Image.new("RGB", (width, 2 * pad + line_h * len(lines)), _BACKGROUND)
    draw = ImageDraw.Draw(strip)
    underline = max(1, fs // 10)
    for k, line in enumerate(lines):
        y = pad + k * line_h
        for x, text, idx in line:
            if idx is None:
                draw.text((x, y), text, font=_font(fs), fill=_TEXT)
            else:
                c = color_for(idx)
                font = _font(fs, bold=True)
                draw.text((x, y), text, font=font, fill=_text_color(c))
                uy = y + fs + max(1, fs // 6)
                draw.rectangle([x, uy, x + int(font.getlength(text)), uy + underline - 1], fill=c)
    return strip


# --------------------------------------------------------------------------- overlay


def _boundary(mask: np.ndarray, thickness: int) -> np.ndarray:
    from scipy import ndimage

    inner = ndimage.binary_erosion(mask, iterations=thickness, border_value=0)
    return mask & ~inner


def overlay(
    image,
    grounding: Grounding,
    *,
    alpha: float = 0.2,
    outline: bool = True,
    points: bool = True,
    caption: bool = True,
) -> Image.Image:
    """The image with each phrase's mask tinted in its colour, outlined, its prompt points
    marked, and (``caption``) the answer below with each phrase in its mask's colour.

    ``image`` is ``[H, W, 3]`` uint8 (or see :func:`to_rgb_array`) of size
    ``grounding.image_size``. The result is RGB, ``W`` wide and ``H`` (+ the caption strip) high;
    the top ``H`` rows are the image. A pixel inside phrase ``i``'s mask (away from its outline
    and points) is ``round((1 - alpha) * pixel + alpha * PALETTE[i])`` (later phrases on top).
    """
    img = to_rgb_array(image)
    h, w = img.shape[:2]
    if (w, h) != tuple(grounding.image_size):
        raise ValueError(f"image is {w}x{h} but the grounding is for {grounding.image_size[0]}x{grounding.image_size[1]}")
    out = img.astype(np.float32)
    edge_t = max(2, int(round(min(h, w) / 200)))
    edges = []
    for i, p in enumerate(grounding.phrases):
        if p.mask is None or not p.mask.any():
            continue
        c = np.asarray(color_for(i), dtype=np.float32)
        m = p.mask
        out[m] = (1.0 - alpha) * out[m] + alpha * c
        if outline:
            edges.append((_boundary(m, edge_t), c))
    for e, c in edges:
        out[e] = c
    canvas = Image.fromarray(np.clip(np.round(out), 0, 255).astype(np.uint8))
    if points:
        draw = ImageDraw.Draw(canvas)
        r = max(3, int(round(min(h, w) / 60)))
        ring = max(1, r // 3)
        for i, p in enumerate(grounding.phrases):
            for x, y in p.points:
                if not (np.isfinite(x) and np.isfinite(y)):
                    continue
                draw.ellipse([x - r - ring, y - r - ring, x + r + ring, y + r + ring], fill=(0, 0, 0))
                draw.ellipse([x - r, y - r, x + r, y + r], fill=color_for(i), outline=(255, 255, 255), width=ring)
    if caption:
        spans = [(p.span[0], p.span[1], i) for i, p in enumerate(grounding.phrases)]
        strip = _render_caption(grounding.answer, spans, w)
        if strip is not None:
            full = Image.new("RGB", (w, h + strip.height), _BACKGROUND)
            full.paste(canvas, (0, 0))
            full.paste(strip, (0, h))
            canvas = full
    return canvas


# --------------------------------------------------------------------------- heatmaps


def _token_label(tok: str) -> str:
    tok = tok.replace("\n", "\\n").replace("\t", "\\t")
    if tok.strip() == "":
        return repr(tok)
    return tok


def _fit(text: str, font, width: int) -> str:
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def heatmap_grid(
    image,
    token_strings: Sequence[str],
    maps,
    *,
    ncols: int | None = None,
    panel_width: int = 160,
    cmap: str = "jet",
    alpha: float = 0.55,
    normalize: str = "panel",
    gap: int = 4,
) -> Image.Image:
    """One panel per token: the image with that token's map blended over it, the token as title.

    Args:
        image: ``[H, W, 3]`` uint8 (or a PIL image).
        token_strings: ``T`` titles.
        maps: ``[T, H, W]`` float maps in the image frame (numpy or torch; NaN shown as the minimum).
        ncols: panels per row (default ``min(T, 8)``).
        panel_width: width of a panel; its height keeps the image's aspect ratio.
        cmap: a matplotlib colour map name.
        normalize: ``"panel"`` (each map min–max scaled on its own) or ``"global"`` (one scale).

    Returns an RGB image of ``ncols * pw + (ncols + 1) * gap`` by
    ``rows * (title_h + ph) + (rows + 1) * gap`` pixels (``title_h = fs + 6``).
    With ``T == 0`` a single panel titled "(no tokens)" shows the image.
    """
    import matplotlib

    img = to_rgb_array(image)
    h, w = img.shape[:2]
    maps = _as_numpy(maps).astype(np.float32)
    if maps.ndim == 2:
        maps = maps[None]
    tokens = list(token_strings)
    if maps.ndim != 3 or maps.shape[1:] != (h, w):
        raise ValueError(f"maps must be [T, {h}, {w}] (the image frame), got {maps.shape}")
    if len(tokens) != maps.shape[0]:
        raise ValueError(f"{len(tokens)} token strings for {maps.shape[0]} maps")
    if normalize not in ("panel", "global"):
        raise ValueError("normalize must be 'panel' or 'global'")
    pw = int(panel_width)
    ph = max(1, int(round(pw * h / w)))
    thumb = np.asarray(Image.fromarray(img).resize((pw, ph), Image.Resampling.BILINEAR), dtype=np.float32)
    t = maps.shape[0]
    n_panels = max(t, 1)
    ncols = max(1, min(ncols or 8, n_panels))
    nrows = math.ceil(n_panels / ncols)
    fs = int(max(9, min(16, pw // 10)))
    font = _font(fs)
    title_h = fs + 6
    sheet = Image.new("RGB", (ncols * pw + (ncols + 1) * gap, nrows * (title_h + ph) + (nrows + 1) * gap), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    colormap = matplotlib.colormaps[cmap]
    finite = maps[np.isfinite(maps)]
    glo = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    for k in range(n_panels):
        r, c = divmod(k, ncols)
        x0 = gap + c * (pw + gap)
        y0 = gap + r * (title_h + ph + gap)
        if t == 0:
            panel = thumb
            title = "(no tokens)"
        else:
            m = np.asarray(Image.fromarray(maps[k]).resize((pw, ph), Image.Resampling.BILINEAR), dtype=np.float32)
            ok = np.isfinite(m)
            if normalize == "panel":
                lo, hi = (float(m[ok].min()), float(m[ok].max())) if ok.any() else (0.0, 1.0)
            else:
                lo, hi = glo
            m = np.where(ok, m, lo)
            m = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
            heat = colormap(np.clip(m, 0, 1))[..., :3] * 255.0
            panel = (1 - alpha) * thumb + alpha * heat
            title = _token_label(tokens[k])
        sheet.paste(Image.fromarray(np.clip(np.round(panel), 0, 255).astype(np.uint8)), (x0, y0 + title_h))
        label = _fit(title, font, pw)
        tw = font.getlength(label)
        draw.text((x0 + (pw - tw) / 2, y0 + 2), label, font=font, fill=_TEXT)
    return sheet


# --------------------------------------------------------------------------- sheets


def contact_sheet(
    images: Sequence[Image.Image],
    ncols: int,
    *,
    pad: int = 8,
    titles: Sequence[str] | None = None,
    background: tuple[int, int, int] = _BACKGROUND,
) -> Image.Image:
    """Images in a grid of ``ncols`` columns, each centred in a cell of the largest width/height.

    Size: ``ncols' * cw + (ncols' + 1) * pad`` by ``rows * ch + (rows + 1) * pad`` with
    ``ncols' = min(ncols, len(images))`` (``ch`` includes a title line when ``titles`` given).
    """
    images = [im if isinstance(im, Image.Image) else Image.fromarray(to_rgb_array(im)) for im in images]
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    if ncols < 1:
        raise ValueError("ncols must be >= 1")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"{len(titles)} titles for {len(images)} images")
    ncols = min(ncols, len(images))
    nrows = math.ceil(len(images) / ncols)
    cw = max(im.width for im in images)
    fs = 14
    title_h = fs + 6 if titles is not None else 0
    ch = max(im.height for im in images) + title_h
    sheet = Image.new("RGB", (ncols * cw + (ncols + 1) * pad, nrows * ch + (nrows + 1) * pad), background)
    draw = ImageDraw.Draw(sheet)
    for k, im in enumerate(images):
        r, c = divmod(k, ncols)
        x0 = pad + c * (cw + pad)
        y0 = pad + r * (ch + pad)
        if titles is not None:
            label = _fit(str(titles[k]), _font(fs), cw)
            draw.text((x0 + (cw - _font(fs).getlength(label)) / 2, y0 + 2), label, font=_font(fs), fill=_TEXT)
        sheet.paste(im.convert("RGB"), (x0 + (cw - im.width) // 2, y0 + title_h + (ch - title_h - im.height) // 2))
    return sheet


def zoom(image: np.ndarray, grounding: Grounding, factor: int):
    """Image ``[H, W, 3]`` and grounding magnified ``factor``× (nearest neighbour), for legible
    overlays of small images. Returns ``(image [fH, fW, 3], grounding)``; heatmaps are dropped."""
    big = np.kron(image, np.ones((factor, factor, 1), dtype=image.dtype))
    phrases = [replace(p, mask=None if p.mask is None else np.kron(p.mask, np.ones((factor, factor), bool)),
                       points=p.points * factor, box=None, heatmap=None) for p in grounding.phrases]
    w, h = grounding.image_size
    return big, replace(grounding, phrases=phrases, image_size=(w * factor, h * factor))
