"""Drift over time: each check's score per version (alarms marked) and each signal's
p-value, as a PNG, or an HTML page holding that picture and the checks."""

import base64
import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use("Agg"), so no display is needed

from evals.drift.checks import DriftCheck
from evals.drift.config import SIGNALS


def _figure(model: str, checks: list[DriftCheck]) -> bytes:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for version in dict.fromkeys(c.version for c in checks):
        mine = [c for c in checks if c.version == version]
        top.plot([c.created_at for c in mine], [c.score for c in mine], marker=".", label=version)
        alarms = [c for c in mine if c.drifted]
        top.scatter(
            [c.created_at for c in alarms], [c.score for c in alarms], color="red", zorder=3
        )
    top.set_ylabel("drift score (largest effect)")
    top.set_ylim(0, 1)
    top.set_title(f"{model}: drift checks (red: drift)")
    top.legend(loc="upper left", fontsize=8)
    for signal in SIGNALS:
        points = [(c.created_at, c.signal(signal)) for c in checks if c.signal(signal)]
        if points:
            bottom.plot(
                [t for t, _ in points],
                [max(r.p_value, 1e-300) for _, r in points],
                marker=".",
                label=signal,
            )
    bottom.set_yscale("log")
    bottom.set_ylabel("p-value")
    bottom.legend(loc="lower left", fontsize=8, ncol=3)
    fig.autofmt_xdate()
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=110)
    plt.close(fig)
    return out.getvalue()


def write_png(model: str, checks: list[DriftCheck], path: Path) -> Path:
    path.write_bytes(_figure(model, checks))
    return path


def write_html(model: str, checks: list[DriftCheck], path: Path) -> Path:
    picture = base64.b64encode(_figure(model, checks)).decode()
    rows = []
    for c in reversed(checks):
        signals = ", ".join(f"{s.signal} {s.effect:.2f} (p={s.p_value:.2g})" for s in c.signals)
        rows.append(
            f"<tr{' class=drift' if c.drifted else ''}><td>{c.created_at:%Y-%m-%d %H:%M:%S}</td>"
            f"<td>{html.escape(c.version)}</td><td>{c.window_n}</td><td>{c.score:.2f}</td>"
            f"<td>{html.escape(', '.join(c.alarms)) or '-'}</td><td>{html.escape(signals)}</td>"
            "</tr>"
        )
    path.write_text(
        "<!doctype html><meta charset='utf-8'><title>drift</title>"
        "<style>body{font-family:sans-serif}td,th{padding:3px 8px;text-align:left}"
        "tr.drift{background:#fdd}</style>"
        f"<h3>{html.escape(model)}: {len(checks)} drift checks</h3>"
        f"<img alt='drift over time' src='data:image/png;base64,{picture}'>"
        "<table><tr><th>checked</th><th>version</th><th>requests</th><th>score</th>"
        f"<th>alarms</th><th>signals: effect (p)</th></tr>{''.join(rows)}</table>",
        encoding="utf-8",
    )
    return path
