"""`llm-edge`: run an edge bundle, and keep a device on the bundle a gateway alias points at.

    llm-edge enroll --gateway URL --dir DEVICE_DIR --public-key gateway.pub
                    (the API key from LLMOPS_EDGE_API_KEY or --api-key-file)
    llm-edge sync --dir DEVICE_DIR --model demo-onnx@edge
    llm-edge rollback --dir DEVICE_DIR
    llm-edge status --dir DEVICE_DIR
    llm-edge run BUNDLE_OR_DEVICE_DIR "What is 12 + 30?"
    llm-edge chat BUNDLE_OR_DEVICE_DIR

Every command takes --json for machine-readable output. Bad input and failures print one
line, `llm-edge: error: ...`, and exit with code 2, as the stack's other command lines do."""

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from llmops_edge.client import GatewayClient, check_gateway_url
from llmops_edge.device import CURRENT, PREVIOUS, Device
from llmops_edge.errors import EdgeError
from llmops_edge.manifest import PublicKey
from llmops_edge.runner import EdgeModel, Sampling
from llmops_edge.sync import rollback, sync

PROG = "llm-edge"
API_KEY_ENV = "LLMOPS_EDGE_API_KEY"


def _fail(message: str) -> NoReturn:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    sys.exit(2)


class _Parser(argparse.ArgumentParser):
    """argparse with the stack's error shape: one line, not the usage text."""

    def error(self, message: str) -> NoReturn:
        _fail(f"{message} (see `{self.prog} --help`)")


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


class _ByteCount:
    """`llm-edge: 12.0 of 40.0 MB` on one line of stderr, rewritten as bytes come."""

    def __init__(self) -> None:
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        self.shown = True
        print(f"\r{PROG}: {done / 1e6:.1f} of {total / 1e6:.1f} MB", end="", file=sys.stderr)
        sys.stderr.flush()

    def close(self) -> None:
        if self.shown:
            print(file=sys.stderr)


def _api_key(path: Path | None) -> str | None:
    if path is not None:
        return path.read_text().strip()
    return os.environ.get(API_KEY_ENV) or None


def _enroll(args: argparse.Namespace) -> None:
    gateway = check_gateway_url(args.gateway, allow_http=args.allow_http)
    client = GatewayClient(gateway, _api_key(args.api_key_file))
    if client.api_key is None:
        raise EdgeError(
            f"no API key: set {API_KEY_ENV} or pass --api-key-file with the key "
            "`llm-serve edge add` printed for this device"
        )
    me = client.get_json("/v1/edge/device")
    if args.public_key is not None:
        key = PublicKey.from_pem(args.public_key.read_text())
    else:
        key = PublicKey.from_pem(str(client.get_json("/v1/edge/public_key").get("public_key")))
        if args.fingerprint is None:
            print(
                f"pinned the gateway's public key {key.fingerprint} as it sent it; check it "
                "against `llm-serve edge public-key` on the gateway",
                file=sys.stderr,
            )
    if args.fingerprint is not None and args.fingerprint != key.fingerprint:
        raise EdgeError(
            f"the public key's fingerprint is {key.fingerprint}, not {args.fingerprint}; "
            "nothing was enrolled"
        )
    Device(args.dir, str(me["id"]), gateway, key, client.api_key).save()
    if args.json:
        _print_json({"device_id": me["id"], "gateway": gateway, "fingerprint": key.fingerprint})
    else:
        print(f"enrolled device {me['id']} with {gateway} (bundles signed by {key.fingerprint})")


def _client(device: Device, gateway: str | None, allow_http: bool) -> GatewayClient:
    url = check_gateway_url(gateway, allow_http=allow_http) if gateway else device.gateway
    return GatewayClient(url, _api_key(None) or device.api_key)


def _report(client: GatewayClient, device: Device, body: dict) -> None:
    """Tell the gateway where the device stands; a report that fails is only a warning."""
    try:
        client.post_json("/v1/edge/reports", {"device_id": device.device_id, **body})
    except EdgeError as err:
        print(f"{PROG}: warning: the report to the gateway failed: {err}", file=sys.stderr)


def _running(device: Device) -> str | None:
    """The version of the bundle that runs, if the device has a readable one."""
    folder = device.bundle(CURRENT)
    try:
        return device.manifest_of(folder).version if folder is not None else None
    except EdgeError:
        return None


def _sync(args: argparse.Namespace) -> None:
    device = Device.load(args.dir)
    client = _client(device, args.gateway, args.allow_http)
    progress = _ByteCount() if sys.stderr.isatty() and not args.json else None
    try:
        device, result = sync(device, client, args.model, progress)
    except EdgeError as err:
        failed = {"model": args.model, "version": _running(device), "status": "failed"}
        _report(client, device, {**failed, "detail": str(err)[:500]})
        raise
    finally:
        if progress is not None:
            progress.close()
    manifest = result.manifest
    _report(
        client,
        device,
        {
            "model": args.model,
            "version": manifest.version,
            "bundle_digest": manifest.artifact_digest,
            "status": result.status,
        },
    )
    if args.json:
        summary = {
            "status": result.status,
            "version": manifest.version,
            "bundle_digest": manifest.artifact_digest,
            "downloaded": list(result.downloaded),
            "reused": list(result.reused),
        }
        _print_json(summary)
    elif result.status == "up-to-date":
        print(f"{args.model}: {manifest.version} is already running")
    else:
        print(
            f"{args.model}: now running {manifest.version} ({len(result.downloaded)} files "
            f"downloaded, {len(result.reused)} reused)"
        )


def _rollback(args: argparse.Namespace) -> None:
    device = Device.load(args.dir)
    left, running = rollback(device)
    client = _client(device, None, False)
    _report(
        client,
        device,
        {
            "model": running.model,
            "version": running.version,
            "bundle_digest": running.artifact_digest,
            "status": "rolled-back",
            "detail": f"from {left.version}",
        },
    )
    if args.json:
        _print_json({"from": left.version, "to": running.version})
    else:
        print(f"rolled back from {left.version} to {running.version}")


def _status(args: argparse.Namespace) -> None:
    device = Device.load(args.dir)
    state = {"device_id": device.device_id, "gateway": device.gateway}
    for link in (CURRENT, PREVIOUS):
        folder = device.bundle(link)
        state[link] = device.manifest_of(folder).version if folder is not None else None
    if args.json:
        _print_json(state)
    else:
        for key, value in state.items():
            print(f"{key:<9}  {value or '-'}")


def _sampling(args: argparse.Namespace) -> Sampling:
    return Sampling(args.max_tokens, args.temperature, args.top_p, args.top_k, args.seed)


def _messages(system: str | None) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}] if system else []


def _run(args: argparse.Namespace) -> None:
    model = EdgeModel(args.bundle)
    messages = [*_messages(args.system), {"role": "user", "content": args.question}]
    answer = model.answer(messages, _sampling(args))
    if args.json:
        _print_json({"answer": answer})
    else:
        print(answer)


def _chat(args: argparse.Namespace) -> None:
    model = EdgeModel(args.bundle)
    messages = _messages(args.system)
    print(f"chatting with {model.folder.name[:12]} (end with Ctrl-D)", file=sys.stderr)
    for line in sys.stdin:
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.strip()})
        if args.json:  # one JSON object per answer, on one line
            answer = model.answer(messages, _sampling(args))
            print(json.dumps({"role": "assistant", "content": answer}), flush=True)
        else:
            pieces = []
            for piece in model.stream(messages, _sampling(args)):
                pieces.append(piece)
                print(piece, end="", flush=True)
            print()
            answer = "".join(pieces)
        messages.append({"role": "assistant", "content": answer})


def _gateway_options(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--gateway", required=required, help="The gateway's base URL.")
    parser.add_argument(
        "--allow-http",
        action="store_true",
        help="Allow plain http to another machine (the API key travels in the clear).",
    )


def _generation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="A bundle folder, or an enrolled device folder.")
    parser.add_argument("--system", help="A system message before the conversation.")
    parser.add_argument("--max-tokens", type=int, default=64, help="Most tokens per answer.")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy.")
    parser.add_argument("--top-p", type=float, default=1.0, help="Nucleus sampling mass.")
    parser.add_argument("--top-k", type=int, default=0, help="Sample among the k best; 0: all.")
    parser.add_argument("--seed", type=int, help="Seed of sampling, for repeatable answers.")


def _json_option(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--json", action="store_true", default=default, help="Print machine-readable JSON."
    )


def parser() -> argparse.ArgumentParser:
    root = _Parser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _json_option(root, False)
    commands = root.add_subparsers(dest="command", required=True)

    enroll = commands.add_parser("enroll", help="Enroll this device with a gateway.")
    _gateway_options(enroll, required=True)
    enroll.add_argument("--dir", type=Path, required=True, help="The device folder.")
    enroll.add_argument(
        "--public-key",
        type=Path,
        help="The gateway's bundle-signing public key (PEM, from `llm-serve edge public-key`); "
        "without it the gateway's is fetched and pinned.",
    )
    enroll.add_argument("--fingerprint", help="The public key's expected sha256:... fingerprint.")
    enroll.add_argument(
        "--api-key-file", type=Path, help=f"A file holding the device's API key ({API_KEY_ENV})."
    )
    enroll.set_defaults(handler=_enroll)

    sync_ = commands.add_parser("sync", help="Install the bundle an alias points at.")
    _gateway_options(sync_, required=False)
    sync_.add_argument("--dir", type=Path, required=True, help="The device folder.")
    sync_.add_argument("--model", required=True, help="The reference to follow, e.g. demo@edge.")
    sync_.set_defaults(handler=_sync)

    back = commands.add_parser("rollback", help="Go back to the previous bundle.")
    back.add_argument("--dir", type=Path, required=True, help="The device folder.")
    back.set_defaults(handler=_rollback)

    status = commands.add_parser("status", help="The device's id and bundles.")
    status.add_argument("--dir", type=Path, required=True, help="The device folder.")
    status.set_defaults(handler=_status)

    run = commands.add_parser("run", help="Answer one question with a bundle.")
    _generation_options(run)
    run.add_argument("question", help="The user message.")
    run.set_defaults(handler=_run)

    chat = commands.add_parser("chat", help="Chat with a bundle, one line per message.")
    _generation_options(chat)
    chat.set_defaults(handler=_chat)
    # --json before the command or after it, as in the stack's command lines; SUPPRESS keeps
    # a command's default from undoing `llm-edge --json CMD`.
    for command in commands.choices.values():
        _json_option(command, argparse.SUPPRESS)
    return root


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        args.handler(args)
    except (EdgeError, OSError) as err:
        _fail(str(err))
    except KeyboardInterrupt:
        sys.exit(130)
