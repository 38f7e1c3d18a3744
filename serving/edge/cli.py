"""`llm-serve edge`: the edge fleet, for operators on the gateway's machine.

\b
llm-serve edge public-key > gateway.pub     what devices are enrolled with
llm-serve edge add kiosk-7 --model demo-onnx@edge   a device and its API key (shown once)
llm-serve edge devices                      the fleet: version, status, last seen
llm-serve edge remove kiosk-7               and its key is revoked"""

from datetime import UTC, datetime

import click

from core.console import print_json, print_table
from core.database import open_database
from core.settings import StackSettings
from registry.service import open_registry
from serving.edge.handlers import EdgeHandlers
from serving.edge.protocol import DEVICE_RPM, DeviceRequest
from serving.edge.signing import BundleSigner
from serving.edge.store import DeviceStore
from serving.keys import KeyStore
from serving.settings import ServingSettings
from serving.tables import CHAIN


def _handlers() -> EdgeHandlers:
    stack = StackSettings()
    stack.ensure_home()
    database = open_database(stack.resolved_database_url, CHAIN)
    return EdgeHandlers(
        open_registry(stack),
        KeyStore(database),
        DeviceStore(database),
        BundleSigner(ServingSettings().signing_key_path(stack.resolved_home)),
    )


def _when(stamp: int | None) -> str:
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S") if stamp else "-"


@click.group(help=__doc__)
def edge() -> None:
    pass


@edge.command(name="public-key")
@click.pass_obj
def public_key(as_json: bool) -> None:
    """Print the public key that verifies bundles (PEM); made on first use."""
    key = _handlers().public_key()
    if as_json:
        print_json(key.model_dump())
    else:
        click.echo(key.public_key, nl=False)
        click.echo(f"fingerprint: {key.key_id}", err=True)


@edge.command(name="add")
@click.argument("device_id")
@click.option("--model", required=True, help="The reference it follows, e.g. demo-onnx@edge.")
@click.option(
    "--rpm",
    type=int,
    default=DEVICE_RPM,
    show_default=True,
    help="Requests per minute its key may make.",
)
@click.pass_obj
def add(as_json: bool, device_id: str, model: str, rpm: int) -> None:
    """Add a device; its API key is printed once, and may call only the edge routes."""
    try:
        request = DeviceRequest(id=device_id, model=model, rpm=rpm)
    except ValueError as err:
        raise click.BadParameter(str(err).splitlines()[-1]) from None
    created = _handlers().add(request)
    if as_json:
        print_json(created.model_dump())
    else:
        click.echo(
            f"added device {created.id} following {created.model}; its API key is shown only "
            f"now (give it to `llm-edge enroll`):\n{created.key}"
        )


@edge.command(name="devices")
@click.pass_obj
def devices(as_json: bool) -> None:
    """The fleet: each device's version, last report and when it was last seen."""
    handlers, found, after = _handlers(), [], None
    while True:
        listing = handlers.fleet(after, 100)
        found.extend(listing.data)
        if not listing.has_more:
            break
        after = listing.last_id
    if as_json:
        print_json([d.model_dump() for d in found])
        return
    print_table(
        ("device", "model", "version", "status", "last seen"),
        [(d.id, d.model, d.version or "-", d.status or "-", _when(d.last_seen_at)) for d in found],
    )


@edge.command(name="remove")
@click.argument("device_id")
@click.pass_obj
def remove(as_json: bool, device_id: str) -> None:
    """Remove a device and revoke its key."""
    device = _handlers().remove(device_id)
    if as_json:
        print_json(device.model_dump())
    else:
        click.echo(f"removed device {device.id}; its key {device.key_id} is revoked")
