"""``curves.png``: a training run's loss curves, drawn with Pillow from the records of ``metrics.jsonl``.

One panel per stage, stacked top to bottom in the stage order vae, base, fast, mask (any other stage after them, in
the order it first appears). Each panel plots the ``loss`` of the stage's records against ``step``:

* the raw values: a thin light line through the logged points (the loss of the logged step, averaged over workers);
* an EMA-smoothed line: ``s_k = w·s_(k−1) + (1 − w)·x_k`` from ``s_0 = 0``, shown debiased as ``s_k / (1 − w^k)``
  (so it starts at the first value), with weight ``w = smoothing`` (0.8 by default; 0 draws the raw values again).

Rules: records without a stage, a step or a finite ``loss`` are left out; when one stage logs the same step twice,
the later record wins; points are sorted by step. The y axis spans the raw values with :data:`Y_PAD` of their range
free above and below (a linear axis of non-negative losses starts at 0 at the lowest); it is log10 instead when every
value is positive and the largest is at least :data:`LOG_RATIO` times the smallest (the panel title says so). The x
axis spans the first to the last logged step. A stage with no usable record gets a panel that says so.

The bytes depend only on the records and the arguments (for one Pillow build): no time stamps, lines drawn without
anti-aliasing, Pillow's built-in font, and :func:`fast_core.data.transforms.encode_png` (fixed compression). Pure
Pillow + numpy; no plotting library.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, get_args

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fast_core.data.transforms import encode_png
from pipelines.train.config import StageName

CURVES = "curves.png"  # beside metrics.jsonl in the run folder
LOG_RATIO = 50.0  # max/min of positive losses from which the y axis is log10

WIDTH = 720  # image width (pixels)
PANEL_HEIGHT = 220  # height of one stage's panel
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 70, 16, 34, 30  # plot area inside a panel
Y_PAD = 0.05  # fraction of the loss range left free above and below the curves
Y_TICKS = 5  # horizontal grid lines, labelled, bottom to top
RAW_COLOUR = (150, 180, 225)
EMA_COLOUR = (20, 60, 160)
GRID_COLOUR = (228, 228, 228)
AXIS_COLOUR = (90, 90, 90)
TEXT_COLOUR = (0, 0, 0)


def stage_series(records: Iterable[Mapping[str, Any]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Stage → (steps, losses), float64, sorted by step, one point per step (the later record wins).

    >>> s = stage_series([{"stage": "fast", "step": 2, "loss": 0.5}, {"stage": "fast", "step": 1, "loss": 0.9},
    ...                   {"stage": "vae", "step": 1, "loss": float("nan")}, {"stage": "fast", "step": 2, "loss": 0.4}])
    >>> {k: (v[0].tolist(), v[1].tolist()) for k, v in s.items()}
    {'vae': ([], []), 'fast': ([1.0, 2.0], [0.9, 0.4])}
    """
    points: dict[str, dict[int, float]] = {}
    for r in records:
        stage, step, loss = r.get("stage"), r.get("step"), r.get("loss")
        if not isinstance(stage, str) or not stage:
            continue
        by_step = points.setdefault(stage, {})
        if isinstance(step, bool) or not isinstance(step, int) or not isinstance(loss, int | float):
            continue
        if math.isfinite(loss):
            by_step[step] = float(loss)
    known = [s for s in get_args(StageName) if s in points]
    order = known + [s for s in points if s not in known]
    out = {}
    for stage in order:
        steps = sorted(points[stage])
        out[stage] = (np.array(steps, np.float64), np.array([points[stage][k] for k in steps], np.float64))
    return out


def ema(values: Sequence[float] | np.ndarray, smoothing: float) -> np.ndarray:
    """The debiased exponential moving average of ``values`` with weight ``smoothing`` in [0, 1).

    >>> ema([1.0, 0.0, 0.0], 0.5).round(4).tolist()
    [1.0, 0.3333, 0.1429]
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing = {smoothing} must be in [0, 1)")
    out = np.empty(len(values), np.float64)
    s = 0.0
    for k, x in enumerate(values, 1):
        s = smoothing * s + (1.0 - smoothing) * float(x)
        out[k - 1] = s / (1.0 - smoothing**k)
    return out


def _fmt(v: float) -> str:
    return f"{v:.4g}"


class _Axis:
    """Maps a data range onto pixels, linearly or in log10."""

    def __init__(self, lo: float, hi: float, p0: int, p1: int, log: bool = False, pad: float = 0.0) -> None:
        self.log = log
        if log:
            lo, hi = math.log10(lo), math.log10(hi)
        margin = (hi - lo) * pad if hi > lo else abs(lo) * 0.1 or 1.0  # one value: centre it
        lo, hi = (lo - margin if log or lo < 0 else max(lo - margin, 0.0)), hi + margin  # no negative linear axis
        self.lo, self.hi, self.p0, self.p1 = lo, hi, p0, p1

    def px(self, v: float) -> int:
        t = ((math.log10(v) if self.log else v) - self.lo) / (self.hi - self.lo)
        return round(self.p0 + t * (self.p1 - self.p0))

    def value(self, t: float) -> float:
        """The data value at fraction ``t`` of the axis."""
        v = self.lo + t * (self.hi - self.lo)
        return 10.0**v if self.log else v


def _panel(
    draw: ImageDraw.ImageDraw, top: int, stage: str, steps: np.ndarray, losses: np.ndarray, smoothing: float
) -> None:
    """Draw one stage's panel with its top edge at ``top``."""
    font = ImageFont.load_default()
    left, right = MARGIN_LEFT, WIDTH - MARGIN_RIGHT
    y_top, y_bottom = top + MARGIN_TOP, top + PANEL_HEIGHT - MARGIN_BOTTOM
    if len(steps) == 0:
        draw.text((8, top + 6), f"stage {stage}: no records with a finite loss", fill=TEXT_COLOUR, font=font)
        return
    smooth = ema(losses, smoothing)
    lo, hi = float(losses.min()), float(losses.max())
    log = lo > 0 and hi >= LOG_RATIO * lo
    xa = _Axis(float(steps[0]), float(steps[-1]), left, right)
    ya = _Axis(lo, hi, y_bottom, y_top, log=log, pad=Y_PAD)
    title = (
        f"stage {stage}: loss, {len(steps)} record{'' if len(steps) == 1 else 's'}, "
        f"steps {int(steps[0])}-{int(steps[-1])}, "
        f"last: {_fmt(losses[-1])}, EMA: {_fmt(smooth[-1])} (w = {smoothing:g}){', log10 axis' if log else ''}"
    )
    draw.text((8, top + 6), title, fill=TEXT_COLOUR, font=font)
    for i in range(Y_TICKS):
        t = i / (Y_TICKS - 1)
        y = round(y_bottom + t * (y_top - y_bottom))
        draw.line([(left, y), (right, y)], fill=GRID_COLOUR)
        draw.text((6, y - 6), _fmt(ya.value(t)), fill=TEXT_COLOUR, font=font)
    draw.line([(left, y_top), (left, y_bottom), (right, y_bottom)], fill=AXIS_COLOUR)
    for t in (0.0, 0.5, 1.0):
        x = round(left + t * (right - left))
        draw.line([(x, y_bottom), (x, y_bottom + 3)], fill=AXIS_COLOUR)
        label = str(round(xa.value(t)))
        draw.text(
            (min(max(x - 3 * len(label), left), right - 6 * len(label)), y_bottom + 6),
            label,
            fill=TEXT_COLOUR,
            font=font,
        )
    draw.text((8, y_bottom + 6), "step", fill=AXIS_COLOUR, font=font)
    raw = [(xa.px(s), ya.px(v)) for s, v in zip(steps.tolist(), losses.tolist(), strict=True)]
    line = [(xa.px(s), ya.px(v)) for s, v in zip(steps.tolist(), smooth.tolist(), strict=True)]
    if len(raw) > 1:
        draw.line(raw, fill=RAW_COLOUR, width=1)
    for x, y in raw:
        draw.rectangle([x - 1, y - 1, x + 1, y + 1], fill=RAW_COLOUR)
    if len(line) > 1:
        draw.line(line, fill=EMA_COLOUR, width=2)
    else:
        draw.rectangle([line[0][0] - 2, line[0][1] - 2, line[0][0] + 2, line[0][1] + 2], fill=EMA_COLOUR)
    legend_x = right - 150
    draw.line([(legend_x, y_top + 8), (legend_x + 18, y_top + 8)], fill=RAW_COLOUR, width=2)
    draw.text((legend_x + 22, y_top + 2), "raw", fill=TEXT_COLOUR, font=font)
    draw.line([(legend_x + 60, y_top + 8), (legend_x + 78, y_top + 8)], fill=EMA_COLOUR, width=2)
    draw.text((legend_x + 82, y_top + 2), "EMA", fill=TEXT_COLOUR, font=font)


def render_curves(records: Iterable[Mapping[str, Any]], smoothing: float = 0.8) -> bytes:
    """The PNG bytes of the loss curves of ``records`` (``metrics.jsonl`` records): see the module docstring.

    The image is :data:`WIDTH` wide and :data:`PANEL_HEIGHT` high per stage (one panel saying "no loss records"
    when there is no stage at all), RGB.
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing = {smoothing} must be in [0, 1)")
    series = stage_series(records)
    image = Image.new("RGB", (WIDTH, PANEL_HEIGHT * max(1, len(series))), "white")
    draw = ImageDraw.Draw(image)
    if not series:
        draw.text((8, 6), "no loss records", fill=TEXT_COLOUR, font=ImageFont.load_default())
    for i, (stage, (steps, losses)) in enumerate(series.items()):
        top = i * PANEL_HEIGHT
        if i:
            draw.line([(0, top), (WIDTH - 1, top)], fill=AXIS_COLOUR)
        _panel(draw, top, stage, steps, losses, smoothing)
    return encode_png(np.asarray(image))
