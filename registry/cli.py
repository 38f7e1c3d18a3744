"""`llm-registry`: register, inspect, fetch, verify, alias, promote (also on a second
person's approval) and roll back versions.

References are `name` (its production alias), `name:version`, `name@alias` and the
`ft:<base>:<suffix>:<job>` names of fine-tuned adapters.
"""

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click
from pydantic import BaseModel

from core.console import parse_pairs, print_json, print_table, run
from core.progress import progress_bar
from registry.completion import complete_model_name, complete_model_ref
from registry.entities import (
    AliasEvent,
    ModelVersion,
    PendingPromotion,
    PromotionStatus,
    VersionFormat,
    VersionKind,
)
from registry.protocol import (
    AliasEventObject,
    AliasObject,
    ModelObject,
    PromotionRequestObject,
    VersionDetailsObject,
    VersionObject,
)
from registry.service import Registry, open_registry

PROG = "llm-registry"
T = TypeVar("T")


def _short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]


def _when(version_or_event: ModelVersion | AliasEvent) -> str:
    return version_or_event.created_at.strftime("%Y-%m-%d %H:%M:%S")


def _json(objects: BaseModel | list[BaseModel]) -> None:
    if isinstance(objects, list):
        print_json([o.model_dump(mode="json") for o in objects])
    else:
        print_json(objects.model_dump(mode="json"))


def _page(items: list[T], limit: int, cursor: Callable[[T], str]) -> list[T]:
    """The first `limit` of `items` (fetched as `limit + 1`); says how to get the next page,
    on stderr so that stdout stays a table or JSON."""
    if len(items) > limit:
        click.echo(f"(more: pass --after {cursor(items[limit - 1])})", err=True)
    return items[:limit]


class _Context:
    def __init__(self, as_json: bool):
        self.as_json = as_json
        self._registry: Registry | None = None

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = open_registry()
        return self._registry


pass_ctx = click.make_pass_decorator(_Context)
break_glass_option = click.option(
    "--break-glass",
    "break_glass",
    default="",
    metavar="REASON",
    help="Why a two-person alias (LLMOPS_TWO_PERSON_ALIASES) moves without a second admin's "
    "approval; recorded in the audit log.",
)
limit_option = click.option(
    "--limit", type=click.IntRange(1, 10_000), default=100, show_default=True
)


@click.group(help=__doc__)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.pass_context
def cli(ctx: click.Context, as_json: bool) -> None:
    ctx.obj = _Context(as_json)


@cli.command()
@click.argument("name", shell_complete=complete_model_name)
@click.argument("source_dir", type=click.Path(path_type=Path))
@click.option("--kind", type=click.Choice([k.value for k in VersionKind]), default="base")
@click.option(
    "--format",
    "fmt",
    type=click.Choice([f.value for f in VersionFormat]),
    default="hf-safetensors",
    help="What the files are.",
)
@click.option(
    "--parent",
    help="Reference of the version this one derives from.",
    shell_complete=complete_model_ref,
)
@click.option("--metric", "metrics", multiple=True, help="NAME=VALUE, repeatable.")
@click.option("--tag", "tags", multiple=True, help="KEY=VALUE, repeatable.")
@click.option("--recipe-digest", help="Digest of the recipe that produced it.")
@click.option("--dataset-digest", "datasets", multiple=True, help="Repeatable.")
@click.option("--source", default="", help="Where it came from (job id, script, URL).")
@click.option("--description", default="", help="Model description, used on first version.")
@click.option("--allow-pickle", is_flag=True, help="Accept pickle-based weight files.")
@pass_ctx
def register(
    ctx: _Context,
    name,
    source_dir,
    kind,
    fmt,
    parent,
    metrics,
    tags,
    recipe_digest,
    datasets,
    source,
    description,
    allow_pickle,
) -> None:
    """Copy SOURCE_DIR into the artifact store as the next version of NAME."""
    try:
        metric_values = {k: float(v) for k, v in parse_pairs(metrics, "--metric").items()}
    except ValueError:
        raise click.BadParameter("metric values must be numbers", param_hint="--metric") from None
    with progress_bar(f"registering {name}", as_json=ctx.as_json) as on_progress:
        version = ctx.registry.register(
            name,
            source_dir,
            kind=kind,
            format=fmt,
            parent=parent,
            metrics=metric_values,
            tags=parse_pairs(tags, "--tag"),
            recipe_digest=recipe_digest,
            dataset_digests=datasets,
            source=source,
            description=description,
            allow_pickle=allow_pickle,
            on_progress=on_progress,
        )
    if ctx.as_json:
        _json(VersionObject.model_validate(version))
    else:
        click.echo(f"registered {version.ref} ({version.artifact_digest})")


@cli.command(name="list")
@click.argument("name", required=False, shell_complete=complete_model_name)
@click.option("--kind", type=click.Choice([k.value for k in VersionKind]))
@click.option("--tag", "tags", multiple=True, help="KEY=VALUE the versions must carry.")
@click.option("--all", "include_archived", is_flag=True, help="Include archived versions.")
@limit_option
@click.option("--after", help="Continue after this model name (or name:version).")
@pass_ctx
def list_(ctx: _Context, name, kind, tags, include_archived, limit, after) -> None:
    """List models, or the versions of NAME (or matching --kind / --tag)."""
    reg = ctx.registry
    held: dict[str, dict[str, int]] = {}
    for a in reg.aliases(name):
        held.setdefault(a.name, {})[a.alias] = a.version
    if name is None and kind is None and not tags:
        models = _page(reg.list_models(limit=limit + 1, after=after), limit, lambda m: m.name)
        if ctx.as_json:
            _json(
                [
                    ModelObject.model_validate(m).model_copy(
                        update={"aliases": held.get(m.name, {})}
                    )
                    for m in models
                ]
            )
            return
        print_table(
            ("name", "latest", "aliases"),
            [
                (
                    m.name,
                    m.latest_version,
                    " ".join(f"{k}->{v}" for k, v in sorted(held.get(m.name, {}).items())),
                )
                for m in models
            ],
        )
        return
    found = reg.list_versions(
        name,
        kind=VersionKind(kind) if kind else None,
        tags=parse_pairs(tags, "--tag"),
        include_archived=include_archived,
        limit=limit + 1,
        after=after,
    )
    versions = _page(found, limit, lambda v: v.ref)
    if ctx.as_json:
        _json([VersionObject.model_validate(v) for v in versions])
        return
    print_table(
        ("ref", "kind", "format", "parent", "digest", "aliases", "created"),
        [
            (
                v.ref + (" (archived)" if v.archived_at else ""),
                v.kind.value,
                v.format.value,
                v.parent or "-",
                _short(v.artifact_digest),
                ",".join(a for a, n in sorted(held.get(v.name, {}).items()) if n == v.version),
                _when(v),
            )
            for v in versions
        ],
    )


@cli.command()
@click.argument("ref", shell_complete=complete_model_ref)
@pass_ctx
def show(ctx: _Context, ref: str) -> None:
    """Show one version with its lineage."""
    details = ctx.registry.show(ref)
    v = details.version
    if ctx.as_json:
        _json(
            VersionDetailsObject(
                **VersionObject.model_validate(v).model_dump(exclude={"object"}),
                lineage=[VersionObject.model_validate(p) for p in details.lineage],
                aliases=list(details.aliases),
            )
        )
        return
    lines = [
        ("ref", v.ref),
        ("kind", v.kind.value),
        ("format", v.format.value),
        ("artifact", v.artifact_digest),
        ("aliases", ", ".join(details.aliases) or "-"),
        ("lineage", " <- ".join([v.ref, *(p.ref for p in details.lineage)])),
        ("recipe", v.recipe_digest or "-"),
        ("datasets", ", ".join(v.dataset_digests) or "-"),
        ("source", v.source or "-"),
        ("created", f"{_when(v)} by {v.created_by}"),
        ("archived", v.archived_at.isoformat() if v.archived_at else "no"),
    ]
    lines += [(f"metric {k}", f"{val:g}") for k, val in sorted(v.metrics.items())]
    lines += [(f"tag {k}", val) for k, val in sorted(v.tags.items())]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        click.echo(f"{key.ljust(width)}  {value}")


@cli.command()
@click.argument("ref", shell_complete=complete_model_ref)
@click.argument("dest", type=click.Path(path_type=Path))
@pass_ctx
def fetch(ctx: _Context, ref: str, dest: Path) -> None:
    """Copy a version's files into the new directory DEST, verifying every digest."""
    with progress_bar(f"fetching {ref}", as_json=ctx.as_json) as on_progress:
        manifest = ctx.registry.fetch(ref, dest, on_progress)
    if ctx.as_json:
        print_json({"ref": ref, "dest": str(dest), "files": len(manifest.files)})
    else:
        click.echo(f"fetched {ref} into {dest} ({len(manifest.files)} files, verified)")


@cli.command()
@click.argument("ref", shell_complete=complete_model_ref)
@pass_ctx
def verify(ctx: _Context, ref: str) -> None:
    """Re-hash a version's stored files; exits 1 naming the first file that does not match."""
    manifest = ctx.registry.verify(ref)
    if ctx.as_json:
        print_json({"ref": ref, "ok": True, "files": len(manifest.files)})
    else:
        click.echo(f"{ref}: {len(manifest.files)} files, {manifest.total_size} bytes, all match")


@cli.group()
def alias() -> None:
    """List, set or delete aliases (ungated; use `promote` for gated moves)."""


@alias.command(name="list")
@click.argument("name", required=False, shell_complete=complete_model_name)
@pass_ctx
def alias_list(ctx: _Context, name: str | None) -> None:
    aliases = ctx.registry.aliases(name)
    if ctx.as_json:
        _json([AliasObject.model_validate(a) for a in aliases])
    else:
        print_table(("model", "alias", "version"), [(a.name, a.alias, a.version) for a in aliases])


@alias.command(name="set")
@click.argument("name", shell_complete=complete_model_name)
@click.argument("alias_name", metavar="ALIAS")
@click.argument("version", type=click.IntRange(min=1))
@click.option("--reason", default="", help="Recorded in the audit log.")
@break_glass_option
@pass_ctx
def alias_set(
    ctx: _Context, name: str, alias_name: str, version: int, reason: str, break_glass: str
) -> None:
    """Point NAME@ALIAS at VERSION."""
    event = ctx.registry.set_alias(
        name, alias_name, version, reason=reason, break_glass=break_glass
    )
    _print_event(ctx, event)


@alias.command(name="delete")
@click.argument("name", shell_complete=complete_model_name)
@click.argument("alias_name", metavar="ALIAS")
@click.option("--reason", default="", help="Recorded in the audit log.")
@break_glass_option
@pass_ctx
def alias_delete(ctx: _Context, name: str, alias_name: str, reason: str, break_glass: str) -> None:
    """Remove NAME@ALIAS."""
    event = ctx.registry.delete_alias(name, alias_name, reason=reason, break_glass=break_glass)
    _print_event(ctx, event)


@cli.command()
@click.argument("ref", shell_complete=complete_model_ref)
@click.argument("alias_name", metavar="ALIAS")
@click.option("--reason", default="", help="Recorded in the audit log.")
@click.option("--force", is_flag=True, help="Override a failing gate (needs --reason).")
@break_glass_option
@pass_ctx
def promote(
    ctx: _Context, ref: str, alias_name: str, reason: str, force: bool, break_glass: str
) -> None:
    """Move ALIAS of REF's model to REF, through the promotion gate."""
    event = ctx.registry.promote(
        ref, alias_name, reason=reason, force=force, break_glass=break_glass
    )
    _print_event(ctx, event)


@cli.command()
@click.argument("name", shell_complete=complete_model_name)
@click.argument("alias_name", metavar="ALIAS", default="production")
@click.option("--reason", default="", help="Recorded in the audit log.")
@break_glass_option
@pass_ctx
def rollback(ctx: _Context, name: str, alias_name: str, reason: str, break_glass: str) -> None:
    """Move NAME@ALIAS back to the version it pointed at before its last move."""
    event = ctx.registry.rollback(name, alias_name, reason=reason, break_glass=break_glass)
    _print_event(ctx, event)


@cli.command()
@click.argument("name", shell_complete=complete_model_name)
@click.option("--alias", "alias_name", help="Only this alias.")
@limit_option
@click.option("--after", type=int, help="Continue after this event id.")
@pass_ctx
def history(ctx: _Context, name: str, alias_name: str | None, limit: int, after: int) -> None:
    """The audit log of NAME's aliases, oldest first."""
    found = ctx.registry.history(name, alias_name, limit=limit + 1, after=after)
    events = _page(found, limit, lambda e: str(e.id))
    if ctx.as_json:
        _json([AliasEventObject.model_validate(e) for e in events])
        return
    print_table(
        ("id", "when", "alias", "action", "from", "to", "actor", "gate", "reason"),
        [
            (
                e.id,
                _when(e),
                e.alias,
                e.action.value + (" (forced)" if e.forced else ""),
                e.from_version or "-",
                e.to_version or "-",
                e.actor,
                f"{e.gate['gate']}:{'pass' if e.gate['passed'] else 'FAIL'}" if e.gate else "-",
                e.reason
                + (f" [break-glass: {e.break_glass_reason}]" if e.break_glass_reason else ""),
            )
            for e in events
        ],
    )


@cli.command()
@click.argument("ref", shell_complete=complete_model_ref)
@pass_ctx
def archive(ctx: _Context, ref: str) -> None:
    """Archive a version: hidden from listings, refused as an alias target, still fetchable."""
    version = ctx.registry.archive(ref)
    if ctx.as_json:
        _json(VersionObject.model_validate(version))
    else:
        click.echo(f"archived {version.ref}")


@cli.group()
def request() -> None:
    """Promotions a second person approves: ask, list, approve, reject."""


@request.command(name="create")
@click.argument("ref", shell_complete=complete_model_ref)
@click.argument("alias_name", metavar="ALIAS", default="production")
@click.option("--reason", required=True, help="Why; recorded with the request.")
@pass_ctx
def request_create(ctx: _Context, ref: str, alias_name: str, reason: str) -> None:
    """Ask for ALIAS of REF's model to move to REF once someone else approves (the gate
    judges it now and again on approval)."""
    _print_request(ctx, ctx.registry.request_promotion(ref, alias_name, reason=reason))


@request.command(name="list")
@click.argument("name", shell_complete=complete_model_name)
@click.option("--status", type=click.Choice([s.value for s in PromotionStatus]))
@pass_ctx
def request_list(ctx: _Context, name: str, status: str | None) -> None:
    """NAME's promotion requests, newest first."""
    ctx.registry.store.get_model(name)
    found = ctx.registry.pending(name, PromotionStatus(status) if status else None)
    if ctx.as_json:
        _json([PromotionRequestObject.model_validate(r) for r in found])
        return
    print_table(
        ("id", "when", "version", "alias", "status", "requested by", "reason", "decided by"),
        [
            (
                r.id,
                r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                r.version,
                r.alias,
                r.status.value,
                r.requested_by,
                r.reason,
                r.decided_by or "-",
            )
            for r in found
        ],
    )


@request.command(name="approve")
@click.argument("name", shell_complete=complete_model_name)
@click.argument("request_id", type=click.IntRange(1))
@click.option("--reason", default="", help="A comment recorded with the approval.")
@pass_ctx
def request_approve(ctx: _Context, name: str, request_id: int, reason: str) -> None:
    """Approve another person's request: the alias moves through the gate."""
    ctx.registry.promotion_request(name, request_id)
    _print_event(ctx, ctx.registry.approve(request_id, reason=reason))


@request.command(name="reject")
@click.argument("name", shell_complete=complete_model_name)
@click.argument("request_id", type=click.IntRange(1))
@click.option("--reason", required=True, help="Why; recorded with the rejection.")
@pass_ctx
def request_reject(ctx: _Context, name: str, request_id: int, reason: str) -> None:
    """Reject another person's request; nothing moves."""
    ctx.registry.promotion_request(name, request_id)
    _print_request(ctx, ctx.registry.reject(request_id, reason=reason))


def _print_event(ctx: _Context, event: AliasEvent) -> None:
    if ctx.as_json:
        _json(AliasEventObject.model_validate(event))
        return
    moved = f"{event.from_version or '-'} -> {event.to_version or '-'}"
    forced = " (forced past a failing gate)" if event.forced else ""
    glass = " (break-glass, recorded)" if event.break_glass_reason else ""
    click.echo(f"{event.name}@{event.alias}: {event.action.value} {moved}{forced}{glass}")


def _print_request(ctx: _Context, request: PendingPromotion) -> None:
    if ctx.as_json:
        _json(PromotionRequestObject.model_validate(request))
        return
    click.echo(
        f"request {request.id}: {request.name}:{request.version} to @{request.alias} "
        f"{request.status.value}"
    )


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(cli, PROG, argv))
