"""The console's charts as the page draws them: labels inside the picture, a value range
with room around the values, and a sentence instead of a chart of one point."""

import itertools
import re
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta
from types import SimpleNamespace

import pytest

from serving.console import charts
from serving.console.pages import templates

GLYPH = 0.6  # an average glyph's width, in font sizes, for digits, dates and v3


def _svg(chart: charts.Chart) -> ET.Element:
    page = templates.get_template("_trend.html").render(trend=chart, axis="checks")
    return ET.fromstring(re.search(r"<svg.*</svg>", page, re.S).group(0))


def _extents(svg: ET.Element) -> list[tuple[float, float, str, str]]:
    """Each tick label's left and right edge (as wide as its characters), text and anchor."""
    size = float(svg.get("font-size"))
    found = []
    for text in svg.iter("text"):
        if text.get("class") != "tick":
            continue
        x, width = float(text.get("x")), len(text.text) * GLYPH * size
        anchor = text.get("text-anchor", "start")
        left = {"start": x, "middle": x - width / 2, "end": x - width}[anchor]
        found.append((left, left + width, text.text, anchor))
    return found


def _inside(svg: ET.Element) -> bool:
    width = float(svg.get("width"))
    return all(left >= 0 and right <= width for left, right, *_ in _extents(svg))


def _times(count: int) -> list[tuple[str, float]]:
    start = datetime(2025, 3, 1, 9, 0)
    return [
        ((start + timedelta(minutes=7 * i)).strftime("%m-%d %H:%M"), 0.1 + (i % 5) / 20)
        for i in range(count)
    ]


@pytest.mark.parametrize(
    "values",
    [
        _times(2),
        _times(9),
        _times(200),
        [(f"v{i}", float(i)) for i in range(1, 4)],
        [(str(step), 1.0 / step) for step in range(1, 1001)],
        [("a rather long label for a point", 1e-6), ("another label as long as that", 3e-6)],
        [("x", 123456.0), ("y", 123457.5)],
    ],
)
def test_tick_labels_fit_inside_the_chart_and_apart(values: list[tuple[str, float]]) -> None:
    chart = charts.line("drift score", values)
    svg = _svg(chart)
    assert _inside(svg), _extents(svg)
    labels = [e for e in _extents(svg) if e[3] == "middle"]  # under the points
    assert labels[-1][2] == values[-1][0] and len(labels) >= 2
    if len(labels[0][2]) < 20:  # long labels may crowd, never leave the picture
        assert all(a[1] < b[0] for a, b in itertools.pairwise(labels)), labels


def test_a_flat_series_gets_a_range_around_its_value() -> None:
    chart = charts.line("exact_match", [("v2", 0.6), ("v3", 0.6)])
    assert chart.low < 0.6 < chart.high
    assert {p.y for p in chart.points} == {(chart.height) / 2}
    ticks = [float(t.text) for t in chart.y_ticks]
    assert 0.6 in ticks and len(ticks) >= 3
    assert all(chart.low <= t <= chart.high for t in ticks)


def test_values_stay_off_the_edges_on_round_ticks() -> None:
    chart = charts.line("exact_match", [("v2", 0.4), ("v3", 0.8), ("v4", 0.6)])
    assert chart.low < 0.4 and chart.high > 0.8
    assert [t.text for t in chart.y_ticks] == ["0.4", "0.5", "0.6", "0.7", "0.8"]


def test_one_scored_version_is_a_sentence_not_a_chart() -> None:
    versions = [
        SimpleNamespace(version=1, metrics={}),
        SimpleNamespace(version=2, metrics={"exact_match": 0.6}),
    ]
    chart = charts.trend(versions, "exact_match")
    page = templates.get_template("_trend.html").render(trend=chart, axis="versions")
    assert "<svg" not in page
    assert "One scored version so far: nothing to compare yet." in page
    assert "<svg" not in templates.get_template("_trend.html").render(
        trend=charts.line("training loss", [], noun="logged loss"), axis="steps"
    )


def test_a_scatter_marks_its_points_on_two_value_axes() -> None:
    chart = charts.scatter(
        "eval_loss", "exact_match", [("a", 1.0, 0.5, True), ("b", 2.0, 0.4, False)], "trial"
    )
    svg = _svg(chart)
    assert [c.get("class") for c in svg.iter("circle")] == ["marked", "point"]
    assert not list(svg.iter("polyline"))
    assert _inside(svg)
