"""The progress bar of the long commands: drawn on a terminal only, never with --json."""

import io

import pytest
from rich.console import Console

from core.progress import progress_bar


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=terminal, width=100), out


@pytest.mark.parametrize(("terminal", "as_json"), [(False, False), (True, True)])
def test_no_bar_off_a_terminal_or_with_json(terminal: bool, as_json: bool) -> None:
    console, out = _console(terminal)
    with progress_bar("fetching demo", as_json=as_json, console=console) as on_progress:
        on_progress(512, 1024)
        on_progress(1024, 1024, "done")
    assert out.getvalue() == ""


def test_a_bar_on_a_terminal() -> None:
    console, out = _console(True)
    with progress_bar("training", unit="steps", console=console) as on_progress:
        on_progress(3, 10, "loss 1.2345")
        console.file.flush()
    drawn = out.getvalue()
    assert "training" in drawn and "3/10" in drawn and "loss 1.2345" in drawn
