"""Heat maps of an explanation: input features across, output tokens down (the whole answer
last), on a diverging scale centred at zero (red: pushes toward the answer, blue: away)."""

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use("Agg"), so no display is needed

from evals.explain.protocol import ExplanationResponse

ANSWER_ROW = "(whole answer)"


def heat_grid(explanation: ExplanationResponse) -> tuple[list[str], list[list[float]]]:
    """Row labels and values: one row per output token where the method gives them, then the
    whole answer."""
    labels, rows = [], []
    if explanation.attributions is not None:
        labels = [repr(t)[1:-1] for t in explanation.output_tokens]
        rows = [list(r) for r in explanation.attributions]
    return [*labels, ANSWER_ROW], [*rows, explanation.sequence_attributions]


def heat_colour(value: float, scale: float) -> str:
    share = min(1.0, abs(value) / scale) if scale else 0.0
    fade = round(255 * (1 - share))
    return f"rgb(255,{fade},{fade})" if value > 0 else f"rgb({fade},{fade},255)"


def write_html(explanation: ExplanationResponse, path: Path) -> Path:
    labels, rows = heat_grid(explanation)
    scale = max((abs(v) for row in rows for v in row), default=0.0)
    head = "".join(f"<th>{html.escape(f)}</th>" for f in explanation.input_features)
    body = []
    for label, row in zip(labels, rows, strict=True):
        cells = "".join(
            f'<td style="background:{heat_colour(v, scale)}" title="{v:.4f}">{v:.2f}</td>'
            for v in row
        )
        body.append(f"<tr><th>{html.escape(label)}</th>{cells}</tr>")
    faith = explanation.faithfulness
    path.write_text(
        "<!doctype html><meta charset='utf-8'><title>explanation</title>"
        "<style>body{font-family:sans-serif}td,th{padding:4px 6px;text-align:center}"
        "td{font-size:12px}</style>"
        f"<h3>{html.escape(explanation.model)}: {html.escape(explanation.method)} "
        f"({html.escape(explanation.granularity)})</h3>"
        f"<p>Answer: <b>{html.escape(explanation.answer)}</b>. Faithfulness: removing the top "
        f"{faith.k} features drops the answer's log-probability by {faith.top_k_drop:.2f}, "
        f"{faith.random_drop:.2f} for {faith.k} random ones (score {faith.score:.2f}).</p>"
        f"<table><tr><th></th>{head}</tr>{''.join(body)}</table>"
    )
    return path


def write_png(explanation: ExplanationResponse, path: Path) -> Path:
    labels, rows = heat_grid(explanation)
    scale = max((abs(v) for row in rows for v in row), default=0.0) or 1.0
    width = max(4.0, 0.6 * len(explanation.input_features) + 2)
    figure, axes = plt.subplots(figsize=(width, 0.45 * len(labels) + 1.8), dpi=100)
    image = axes.imshow(rows, cmap="RdBu_r", vmin=-scale, vmax=scale, aspect="auto")
    axes.set_xticks(range(len(explanation.input_features)), explanation.input_features)
    axes.set_yticks(range(len(labels)), labels)
    axes.tick_params(axis="x", rotation=45)
    axes.set_title(f"{explanation.model}: {explanation.method}, answer {explanation.answer!r}")
    figure.colorbar(image, ax=axes, label="attribution")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
