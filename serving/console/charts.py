"""Server-drawn pictures: the layout of a metric's trend across versions and of a
version's lineage, as coordinates the SVG templates draw (no chart library in the page)."""

import re
from dataclasses import dataclass

from core.refs import VERSION_REF_PATTERN
from registry.entities import ModelVersion

WIDTH, HEIGHT, PAD = 640, 240, 40


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    label: str  # a version (v3) or a training step
    value: float


@dataclass(frozen=True)
class Chart:
    """A line chart: `metric` against labelled points (versions, training steps)."""

    metric: str
    points: tuple[Point, ...]
    low: float
    high: float
    width: int = WIDTH
    height: int = HEIGHT
    pad: int = PAD

    @property
    def path(self) -> str:
        return " ".join(f"{p.x:.1f},{p.y:.1f}" for p in self.points)


def line(metric: str, values: list[tuple[str, float]]) -> Chart:
    """`values` (label, value) in order, scaled into the chart."""
    if not values:
        return Chart(metric, (), 0.0, 0.0)
    numbers = [value for _, value in values]
    low, high = min(numbers), max(numbers)
    span = high - low or 1.0
    step = (WIDTH - 2 * PAD) / max(len(values) - 1, 1)
    points = tuple(
        Point(
            PAD + i * step,
            HEIGHT - PAD - (value - low) / span * (HEIGHT - 2 * PAD),
            label,
            value,
        )
        for i, (label, value) in enumerate(values)
    )
    return Chart(metric, points, low, high)


def trend(versions: list[ModelVersion], metric: str) -> Chart:
    """`metric` of each version that has it, in version order."""
    return line(
        metric, [(f"v{v.version}", v.metrics[metric]) for v in versions if metric in v.metrics]
    )


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
