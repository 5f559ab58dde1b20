"""Oracle test: PNG charts written by plot_png (cairo) open in Pillow and
Python's zlib, and their pixels say what the data says.

Runs tests/base/plot_png_sample (path in PLOT_PNG_SAMPLE, set by CMake); the
charts it draws are described at the top of plot_png_sample.cpp.
"""
import math
import os
import struct
import subprocess
import zlib

import numpy as np
import pytest
from PIL import Image

TOOL = os.environ.get("PLOT_PNG_SAMPLE", "")
TAB10 = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
         (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


@pytest.fixture(scope="module")
def charts(tmp_path_factory):
    if not TOOL or not os.path.exists(TOOL):
        pytest.fail("PLOT_PNG_SAMPLE is not set to the built plot_png_sample")
    d = tmp_path_factory.mktemp("plots")
    subprocess.run([TOOL, str(d)], check=True, timeout=60)
    return d


def pixels(path, size=(640, 400)):
    with Image.open(path) as im:
        im.verify()  # chunk CRCs and structure
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB", (im.format, im.mode)
        assert im.size == size, im.size
        return np.asarray(im.convert("RGB")).astype(np.int32)


def mask(a, rgb):
    return np.all(a == np.array(rgb), axis=-1)


def plot_area(a):
    """(x0, y0, x1, y1) of the plot area from the black axes drawn just outside it."""
    black = mask(a, (0, 0, 0))
    y1 = int(np.argmax(black.sum(axis=1)))       # x axis: the longest black row
    xs = np.nonzero(black[y1])[0]
    x_axis = int(np.argmax(black.sum(axis=0)))   # y axis: the longest black column
    ys = np.nonzero(black[:, x_axis])[0]
    return x_axis + 1, int(ys.min()), int(xs.max()) + 1, y1


@pytest.mark.parametrize("name", ["bars.png", "lines.png"])
def test_container(charts, name):
    raw = (charts / name).read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    at, types, idat = 8, [], b""
    while at < len(raw):
        (n,) = struct.unpack_from(">I", raw, at)
        kind, body = raw[at + 4:at + 8], raw[at + 8:at + 8 + n]
        (crc,) = struct.unpack_from(">I", raw, at + 8 + n)
        assert crc == zlib.crc32(kind + body), kind
        types.append(kind)
        if kind == b"IDAT":
            idat += body
        at += 12 + n
    assert types[0] == b"IHDR" and types[-1] == b"IEND", types
    data = zlib.decompress(idat)  # checks the Adler-32 trailer
    assert len(data) == 400 * (1 + 640 * 3)
    pixels(charts / name)


def test_bars(charts):
    a = pixels(charts / "bars.png")
    x0, y0, x1, y1 = plot_area(a)
    values, cats = [3, 1.5, -1, 4, 2.5], [0, 1, 1, 2, 0]
    bars = []  # (colour index, first x, last x)
    for x in range(x0, x1):
        col = a[y0:y1, x]
        found = [k for k in range(3) if mask(col, TAB10[k]).sum() > 20]
        assert len(found) <= 1, (x, found)
        if found and bars and bars[-1][0] == found[0] and bars[-1][2] == x - 1:
            bars[-1][2] = x
        elif found:
            bars.append([found[0], x, x])
    assert [b[0] for b in bars] == cats, bars
    slot = (x1 - x0) / len(values)
    tops, bottoms, heights = [], [], []
    for (k, bx0, bx1), i in zip(bars, range(len(values))):
        assert bx0 >= x0 + i * slot - 1 and bx1 <= x0 + (i + 1) * slot + 1, (i, bx0, bx1, slot)
        assert bx1 - bx0 + 1 >= 0.6 * slot, "bars fill most of their slot"
        rows = np.nonzero(mask(a[:, (bx0 + bx1) // 2], TAB10[k]))[0]
        assert rows.max() - rows.min() + 1 == len(rows), "one solid bar per column"
        tops.append(rows.min()), bottoms.append(rows.max()), heights.append(len(rows))
    # positive bars stand on one zero line, the negative one hangs from it
    zero = bottoms[0]
    assert all(abs(bottoms[i] - zero) <= 1 for i in (0, 1, 3, 4)), bottoms
    assert abs(tops[2] - zero) <= 2, (tops[2], zero)
    per_unit = heights[3] / 4
    for h, v in zip(heights, values):
        assert abs(h - per_unit * abs(v)) <= 2, (heights, values)
    # legend: one 8x8 swatch per category to the right of the plot area
    for k in range(3):
        ys, xs = np.nonzero(mask(a[:, x1:], TAB10[k]))
        assert len(ys) == 64, (k, len(ys))


def test_lines_log_y(charts):
    a = pixels(charts / "lines.png")
    x0, y0, x1, y1 = plot_area(a)
    inner = a[y0:y1, x0:x1]
    ys, xs = np.nonzero(mask(inner, TAB10[0]))
    # y = 10^(x/2) is a straight line on a log axis running from 1 (bottom) to 10^4 (top)
    slope, icept = np.polyfit(xs, ys, 1)
    assert np.abs(ys - (slope * xs + icept)).max() <= 4  # a 2-px antialiased line and 4-px markers
    assert abs(icept - (y1 - y0 - 1)) <= 3 and abs(slope * (x1 - x0 - 1) + icept) <= 3, (slope, icept)
    # y = 5 is flat, where the exp line crosses it: at x = 2 log10(5)
    fy, fx = np.nonzero(mask(inner, TAB10[1]))
    assert fy.max() - fy.min() <= 4, (fy.min(), fy.max())
    cross = 2 * math.log10(5) / 8 * (x1 - x0 - 1)
    assert abs(np.median(fy) - (slope * cross + icept)) <= 3
    assert fx.min() <= 2 and fx.max() >= x1 - x0 - 3, "the flat line spans the x range"


def test_figure_panels_each_span_their_own_range(charts):
    """Three metrics of different scales (0.02, 1.15, 1e-4..1e-3 on a log axis):
    each curve runs from its panel's bottom to its top, with its x range."""
    a = pixels(charts / "figure.png", (640, 460))
    black = mask(a, (0, 0, 0))
    axes = [y for y in range(a.shape[0]) if black[y].sum() > a.shape[1] // 2]
    assert len(axes) == 3, axes
    y_axis = int(np.argmax(black.sum(axis=0)))
    right = int(np.nonzero(black[axes[0]])[0].max())
    top = 0
    for k, bottom in enumerate(axes):
        col = np.nonzero(black[top:bottom, y_axis])[0]
        area_top = top + int(col.min())
        ys, xs = np.nonzero(mask(a[area_top:bottom, y_axis + 1:right], TAB10[0]))
        assert len(ys) > 100, k
        height = bottom - area_top
        # linear panels: most of the height; the log panel's axis is whole decades (1e-4..1e-2):
        # 1e-4..1.1e-3 spans log10(11) / 2 of it
        share = 0.6 if k < 2 else 0.45
        assert ys.max() - ys.min() >= share * height, (k, ys.min(), ys.max(), height)
        assert xs.min() <= 3 and xs.max() >= right - y_axis - 4, (k, xs.min(), xs.max())
        top = bottom + 1
