"""Draw which visual tokens were kept, over the original image (PIL only: no plotting library in the core)."""

from __future__ import annotations

import textwrap

from PIL import Image, ImageDraw, ImageFont

from .prune_state import ImagePruning

KEPT_TOKENS_CAPTION = "kept visual tokens outlined in yellow, dropped ones darkened"


def token_cells(width: int, height: int, grid: tuple[int, int], letterbox: bool = False,
                region: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)):
    """Pixel box (x0, y0, x1, y1) of every token cell in raster order, in the ORIGINAL image's coordinates.

    Qwen-style processors rescale the image to the grid (a plain resize), so cells tile the image. LLaVA-1.5 pads
    the image to a centred square first (``letterbox``), so cells tile that square and some fall on the padding.
    A grid that shows only part of the image (an InternVL tile: ``region`` as fractions x0, y0, x1, y1) tiles that
    part.
    """
    rows, cols = grid
    if letterbox:
        if tuple(region) != (0.0, 0.0, 1.0, 1.0):
            raise ValueError("a letterboxed grid always shows the whole image")
        side = max(width, height)
        ox, oy = (side - width) // 2, (side - height) // 2
        cw, ch = side / cols, side / rows
    else:
        x0, y0, x1, y1 = region
        ox, oy = -x0 * width, -y0 * height
        cw, ch = (x1 - x0) * width / cols, (y1 - y0) * height / rows
    return [
        (c * cw - ox, r * ch - oy, (c + 1) * cw - ox, (r + 1) * ch - oy) for r in range(rows) for c in range(cols)
    ]


def grids_per_image(sizes: list[tuple[int, int]], grids: list[ImagePruning], regions_of) -> list[list[tuple]]:
    """A sample's grids (``SamplePruning.images``, in order) grouped by input image, each with the region of the image
    it shows: ``regions_of(width, height)`` is the family's ``FamilyAdapter.grid_regions`` for that image."""
    out, cursor = [], 0
    for width, height in sizes:
        regions = regions_of(width, height)
        parts = grids[cursor:cursor + len(regions)]
        if len(parts) != len(regions):
            raise ValueError(f"{len(grids)} token grids do not match the {len(sizes)} image(s) given")
        out.append(list(zip(parts, regions)))
        cursor += len(regions)
    if cursor != len(grids):
        raise ValueError(f"{len(grids)} token grids do not match the {len(sizes)} image(s) given")
    return out


def draw_kept_tokens(image: Image.Image, pruning: ImagePruning | list[tuple], letterbox: bool = False,
                     caption: str | None = None) -> Image.Image:
    """The image with dropped tokens darkened and kept tokens outlined; ``caption`` is written in a strip below.

    ``pruning`` is one grid over the whole image, or (grid, region) pairs from :func:`grids_per_image`; a grid whose
    region is None (a thumbnail: a second view of the whole image) is not drawn.
    """
    base = image.convert("RGB")
    shade = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(shade)
    parts = [(pruning, (0.0, 0.0, 1.0, 1.0))] if isinstance(pruning, ImagePruning) else pruning
    for grid, region in parts:
        if region is None:
            continue
        cells = token_cells(base.width, base.height, grid.grid, letterbox, region)
        for kept, (x0, y0, x1, y1) in zip(grid.keep.tolist(), cells):
            if kept:
                draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 215, 0, 255), width=max(1, base.width // 300))
            else:
                draw.rectangle([x0, y0, x1, y1], fill=(0, 0, 0, 150))
    drawn = Image.alpha_composite(base.convert("RGBA"), shade).convert("RGB")
    return add_caption(drawn, caption) if caption else drawn


def add_caption(image: Image.Image, caption: str) -> Image.Image:
    """``image`` with ``caption`` in black on a white strip below it, wrapped to the image width."""
    size = max(11, image.width // 32)
    font = ImageFont.load_default(size=size)
    char_width = max(1.0, font.getlength("abcdefghijklmnopqrstuvwxyz") / 26)
    lines = textwrap.wrap(caption, width=max(10, int((image.width - 8) / char_width)))
    line_height = size + 4
    out = Image.new("RGB", (image.width, image.height + line_height * len(lines) + 6), "white")
    out.paste(image.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((4, image.height + 3 + i * line_height), line, fill="black", font=font)
    return out
