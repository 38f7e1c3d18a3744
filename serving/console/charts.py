"""Server-drawn pictures: the layout of a line chart (a metric across versions, checks or
steps), of a scatter chart (two objectives of a study's trials) and of a version's lineage,
as coordinates the SVG templates draw (no chart library in the page)."""

import math
import re
from dataclasses import dataclass

from core.refs import VERSION_REF_PATTERN
from registry.entities import ModelVersion

WIDTH, HEIGHT, PAD = 640, 240, 40
FONT_SIZE = 12
# A generous average glyph width at FONT_SIZE for the labels drawn (digits, dates, v3),
# which is what keeps each label inside the picture and apart from its neighbours.
CHAR_WIDTH = 0.6 * FONT_SIZE
LABEL_GAP = 12
MARGIN = 0.05  # of the values' span, left free above and below them
MOST_TICKS = 6


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    label: str  # a version (v3), a check's time, a training step, a trial
    value: float
    marked: bool = False  # drawn apart (a study's Pareto front)


@dataclass(frozen=True)
class Tick:
    at: float  # where it marks its axis (x on the horizontal axis, y on the vertical)
    x: float  # where its label is drawn, anchored at its middle (horizontal) or end (vertical)
    y: float
    text: str


@dataclass(frozen=True)
class Chart:
    """`metric` against labelled points (versions, checks, steps), joined by a line; or,
    with `x_name`, against a second value (a scatter). Without points, `message` says why."""

    metric: str
    points: tuple[Point, ...] = ()
    low: float = 0.0
    high: float = 0.0
    x_ticks: tuple[Tick, ...] = ()
    y_ticks: tuple[Tick, ...] = ()
    left: float = PAD  # the plot's left edge, right of the value labels
    message: str = ""
    x_name: str = ""
    width: int = WIDTH
    height: int = HEIGHT
    pad: int = PAD
    font_size: int = FONT_SIZE

    @property
    def path(self) -> str:
        return " ".join(f"{p.x:.1f},{p.y:.1f}" for p in self.points)


def text_width(text: str) -> float:
    return len(text) * CHAR_WIDTH


def _scale(numbers: list[float]) -> tuple[float, float, list[float]]:
    """A range around `numbers` with a margin (around a lone value too), and the round values
    within it that its ticks mark."""
    low, high = min(numbers), max(numbers)
    margin = (high - low) * MARGIN or abs(low) * MARGIN * 2 or 1.0
    low, high = low - margin, high + margin
    rough = (high - low) / MOST_TICKS
    magnitude = 10 ** math.floor(math.log10(rough))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= rough)
    first, last = math.ceil(low / step), math.floor(high / step)
    return low, high, [round(k * step, 12) for k in range(first, last + 1)]


def _number(value: float) -> str:
    return f"{value:.6g}"


def _x_tick(x: float, text: str) -> Tick:
    """A label under `x`, moved in where it would stick out of the picture."""
    half = text_width(text) / 2
    return Tick(x, round(min(max(x, half), WIDTH - half), 1), HEIGHT - PAD + 16, text)


def _y_ticks(low: float, high: float, marks: list[float]) -> tuple[tuple[Tick, ...], float]:
    """The value axis's ticks, and the plot's left edge that leaves room for their labels."""
    texts = [_number(m) for m in marks]
    left = max(PAD, max(text_width(t) for t in texts) + 10)
    ticks = tuple(
        Tick(y := _y(mark, low, high), left - 6, y, text)
        for mark, text in zip(marks, texts, strict=True)
    )
    return ticks, left


def _y(value: float, low: float, high: float) -> float:
    return round(HEIGHT - PAD - (value - low) / (high - low) * (HEIGHT - 2 * PAD), 1)


def _too_few(metric: str, count: int, noun: str) -> Chart | None:
    if count >= 2:
        return None
    if count == 1:
        return Chart(metric, message=f"One {noun} so far: nothing to compare yet.")
    return Chart(metric, message=f"No {noun} yet: nothing to draw.")


def line(metric: str, values: list[tuple[str, float]], noun: str = "point") -> Chart:
    """`values` (label, value) in order, evenly spaced; with fewer than two (finite) values,
    a message that names them as `noun`."""
    values = [(label, value) for label, value in values if math.isfinite(value)]
    if few := _too_few(metric, len(values), noun):
        return few
    low, high, marks = _scale([value for _, value in values])
    y_ticks, left = _y_ticks(low, high, marks)
    step = (WIDTH - PAD - left) / (len(values) - 1)
    points = tuple(
        Point(round(left + i * step, 1), _y(value, low, high), label, value)
        for i, (label, value) in enumerate(values)
    )
    widest = max(text_width(p.label) for p in points)
    spacing = widest + LABEL_GAP + max(0.0, widest / 2 - PAD)  # a label moved in needs more
    most = max(2, 1 + int((points[-1].x - points[0].x) // spacing))
    stride = math.ceil((len(points) - 1) / (most - 1))
    # Every stride-th label, counted back from the newest point, which is always labelled.
    x_ticks = tuple(_x_tick(p.x, p.label) for p in points[::-1][::stride][::-1])
    return Chart(metric, points, low, high, x_ticks, y_ticks, left)


def trend(versions: list[ModelVersion], metric: str) -> Chart:
    """`metric` of each version that has it, in version order."""
    return line(
        metric,
        [(f"v{v.version}", v.metrics[metric]) for v in versions if metric in v.metrics],
        noun="scored version",
    )


def scatter(
    x_name: str, y_name: str, values: list[tuple[str, float, float, bool]], noun: str
) -> Chart:
    """`values` (label, x, y, marked) as points on two value axes; with fewer than two, a
    message that names them as `noun`."""
    values = [v for v in values if math.isfinite(v[1]) and math.isfinite(v[2])]
    if few := _too_few(y_name, len(values), noun):
        return few
    low, high, marks = _scale([y for _, _, y, _ in values])
    y_ticks, left = _y_ticks(low, high, marks)
    x_low, x_high, x_marks = _scale([x for _, x, _, _ in values])

    def x_of(value: float) -> float:
        return round(left + (value - x_low) / (x_high - x_low) * (WIDTH - PAD - left), 1)

    points = tuple(
        Point(x_of(x), _y(y, low, high), label, y, marked) for label, x, y, marked in values
    )
    x_ticks = tuple(_x_tick(x_of(mark), _number(mark)) for mark in x_marks)
    return Chart(y_name, points, low, high, x_ticks, y_ticks, left, x_name=x_name)


@dataclass(frozen=True)
class Node:
    ref: str
    caption: str  # kind and format
    y: int
    current: bool


NODE_GAP = 70
_VERSION_REF = re.compile(VERSION_REF_PATTERN)


@dataclass(frozen=True)
class Related:
    """A version a tag names (a teacher, a base, a federated silo's adapter), drawn beside."""

    tag: str
    ref: str
    y: int


def related(version: ModelVersion) -> tuple[Related, ...]:
    """The tags of `version` whose values are version references, in tag order."""
    refs = [(k, v) for k, v in sorted(version.tags.items()) if _VERSION_REF.fullmatch(v)]
    return tuple(Related(tag, ref, 10 + i * NODE_GAP) for i, (tag, ref) in enumerate(refs))


def lineage(version: ModelVersion, ancestors: tuple[ModelVersion, ...]) -> tuple[Node, ...]:
    """The version and its ancestors as a column of boxes, the root at the top."""
    chain = [*reversed(ancestors), version]
    return tuple(
        Node(v.ref, f"{v.kind.value} / {v.format.value}", 10 + i * NODE_GAP, v is version)
        for i, v in enumerate(chain)
    )
