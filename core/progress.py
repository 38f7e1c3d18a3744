"""Progress bars of the long commands (training, exports, registering and fetching files), on
stderr. They show only on a terminal and never with `--json`, so that pipes, logs and scripts
get the command's output alone. Library code takes the callback that `progress_bar` yields
(`on_progress(done, total)`) and never imports this module."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

OnProgress = Callable[..., None]


def _hidden(done: int, total: int | None, note: str = "") -> None:
    """The callback when no bar is shown."""


def _columns(unit: Literal["bytes", "steps"]) -> list[ProgressColumn]:
    if unit == "bytes":
        counts: list[ProgressColumn] = [DownloadColumn(), TransferSpeedColumn()]
    else:
        counts = [MofNCompleteColumn()]
    return [
        TextColumn("{task.description}"),
        BarColumn(),
        *counts,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[note]}"),
    ]


@contextmanager
def progress_bar(
    description: str,
    *,
    as_json: bool = False,
    unit: Literal["bytes", "steps"] = "bytes",
    console: Console | None = None,
) -> Iterator[OnProgress]:
    """A bar on stderr, removed when the block ends; yields `on_progress(done, total,
    note="")`, where `total` may be None while it is unknown and `note` is shown after the
    bar (a step's loss, an export's stage)."""
    console = console or Console(stderr=True)
    if as_json or not console.is_terminal:
        yield _hidden
        return
    with Progress(*_columns(unit), console=console, transient=True) as bar:
        task = bar.add_task(description, total=None, note="")

        def on_progress(done: int, total: int | None, note: str = "") -> None:
            bar.update(task, completed=done, total=total, note=note)

        yield on_progress
