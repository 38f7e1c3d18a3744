"""Command-line plumbing shared by every `llm-*` command: one-line errors with exit code 2
for bad input (1 for a broken state), `--log-level` and `--log-format`, tables and JSON
output."""

import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

import click

from core.errors import StackError
from core.logs import add_log_options


def fail(prog: str, message: str, code: int) -> int:
    click.echo(f"{prog}: error: {message}", err=True)
    return code


JSON_FLAG = "--json"
# bitsandbytes warns on import, on every CPU with AVX512-BF16, that it could not fetch an
# optional kernel from the Hugging Face hub; stderr is for the command's own messages. Set
# here, on import: every command line imports this module before anything imports bitsandbytes.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def _json_first(argv: Sequence[str]) -> list[str]:
    """`--json` anywhere before a `--` moved to the front, where every command group of the
    stack takes it: `llm-registry list --json` as users type it."""
    args = list(argv)
    end = args.index("--") if "--" in args else len(args)
    if JSON_FLAG in args[:end]:
        args.remove(JSON_FLAG)
        args.insert(0, JSON_FLAG)
    return args


def run(
    group: click.Group, prog: str, argv: Sequence[str] | None = None, *, log_level: str = "warning"
) -> int:
    """Run a click group; bad input (a usage error or a StackError) prints one line and
    returns 2, never a traceback. An error of the stack's state (an integrity check that
    failed, a schema this release cannot use) returns 1. `log_level` is the default of the
    group's `--log-level`."""
    add_log_options(group, log_level)
    args = _json_first(sys.argv[1:] if argv is None else argv)
    try:
        return group.main(args=args, prog_name=prog, standalone_mode=False) or 0
    except click.UsageError as err:
        hint = (
            f" (see `{prog} --help`)"
            if err.ctx is None
            else f" (see `{err.ctx.command_path} --help`)"
        )
        return fail(prog, err.format_message() + hint, 2)
    except click.ClickException as err:
        return fail(prog, err.format_message(), 2)
    except click.Abort:
        return fail(prog, "aborted", 1)
    except StackError as err:
        return fail(prog, err.message, 1 if err.http_status >= 500 else 2)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print rows as aligned columns under upper-case headers."""
    cells = [[str(h).upper() for h in headers]] + [
        ["" if c is None else str(c) for c in r] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def parse_pairs(pairs: Sequence[str], option: str) -> dict[str, str]:
    """Turn repeated `KEY=VALUE` options into a dict."""
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint=option)
        result[key] = value
    return result
