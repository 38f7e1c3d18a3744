"""Flower's deployment runtime as processes: a SuperLink (with the coordinator's ServerApp in
its subprocess), SuperNodes (one per silo, each running the silo's ClientApp in a
subprocess), and `flwr run`, which packages this release's Flower App (`app/`) and starts it
on the SuperLink. Every process gets the stack's Python environment (its `bin` first on PATH),
so the ServerApp and ClientApps import the installed `finetune.federated`.

Security as Flower provides it: TLS on the SuperLink's APIs from a certificates folder
(`ca.crt`, `server.pem`, `server.key`; SuperNodes and `flwr` verify with `ca.crt`), and
SuperNode authentication (the SuperLink admits only SuperNodes whose ECDSA public key was
registered with `flwr supernode register`; each SuperNode signs with its private key).

Flower's Control API (start runs, register SuperNode keys) has no authentication in this
release, so it listens on the coordinator's loopback only: reaching it from elsewhere would
let anyone register a node key or start any Flower App. Silos run only Flower Apps that a
key they trust signed (`silo_node`, `signing`)."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from flwr.proto.control_pb2 import ListRunsRequest
from flwr.proto.control_pb2_grpc import ControlStub

from core.errors import ErrorCode
from finetune.errors import FinetuneError
from finetune.federated.config import Transport

APP_DIR = Path(__file__).resolve().parent / "app"
BIN = Path(sys.executable).parent
REGISTRATION_RETRY_S = 3.0
CONNECTION = "coordinator"  # the SuperLink connection's name in the job's Flower config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **(extra or {})}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env["FLWR_TELEMETRY_ENABLED"] = "0"  # Flower reports usage to flower.ai unless told not to
    return env


@dataclass(frozen=True)
class Certificates:
    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.crt"

    def check(self) -> "Certificates":
        for name in ("ca.crt", "server.pem", "server.key"):
            if not (self.folder / name).is_file():
                raise FinetuneError(
                    ErrorCode.INVALID,
                    f"transport.certificates: {name} is missing from {self.folder}",
                    param="transport.certificates",
                )
        return self


def certificates(transport: Transport) -> Certificates | None:
    if transport.certificates is None:
        return None
    return Certificates(Path(transport.certificates).expanduser()).check()


@dataclass
class Processes:
    """Processes this job started, stopped together (each in its own session)."""

    running: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    launches: dict[str, tuple[list[str], Path, dict[str, str]]] = field(default_factory=dict)
    app_addresses: list[str] = field(default_factory=list)  # AppIo APIs of our SuperExecs

    def start(
        self, name: str, command: list[str], log: Path, env: dict[str, str]
    ) -> subprocess.Popen:
        self.launches[name] = (command, log, env)
        with log.open("ab") as output:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.running.append((name, process))
        return process

    def restart_exited(self, prefix: str) -> list[str]:
        """Start again every process named `prefix...` that has exited; their names."""
        restarted = []
        for name, process in list(self.running):
            if name.startswith(prefix) and process.poll() is not None:
                command, log, env = self.launches[name]
                self.running.remove((name, process))
                self.start(name, command, log, env)
                restarted.append(name)
        return restarted

    def stop(self) -> None:
        """Stop every process started here, then the ServerApp / ClientApp processes that
        Flower's SuperExec started for them (in sessions of their own; they can outlive
        their SuperLink or SuperNode), found by the AppIo address they were given."""
        for _, process in reversed(self.running):
            signal_group(process, signal.SIGTERM)
        for _, process in reversed(self.running):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                signal_group(process, signal.SIGKILL)
                process.wait()
        self.running.clear()
        for pid in app_processes(self.app_addresses):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def app_processes(addresses: list[str]) -> list[int]:
    """ServerApp / ClientApp processes talking to one of these AppIo `addresses`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in args]
        line = " ".join(words)
        if any(f"{flag} {addr}" in line for flag in _APPIO_FLAGS for addr in addresses):
            found.append(int(entry.name))
    return found


_APPIO_FLAGS = ("--serverappio-api-address", "--clientappio-api-address", "--appio-api-address")


def wait_for_port(host: str, port: int, process: subprocess.Popen, what: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise FinetuneError(
                ErrorCode.INTERNAL,
                f"{what} exited with code {process.returncode} at start; see {log.name}",
            )
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        time.sleep(0.2)
    raise FinetuneError(ErrorCode.INTERNAL, f"{what} did not listen on port {port} in 60 s")


def superlink_command(transport: Transport, state_dir: Path, node_auth: bool) -> list[str]:
    host = transport.host
    command = [
        str(BIN / "flower-superlink"),
        "--fleet-api-address",
        f"{host}:{transport.fleet_port}",
        "--serverappio-api-address",
        f"127.0.0.1:{transport.serverapp_port}",
        "--control-api-address",
        f"127.0.0.1:{transport.control_port}",
        "--database",
        str(state_dir / "superlink.db"),
        "--disable-runtime-dependency-installation",
    ]
    certs = certificates(transport)
    if certs is None:
        command.append("--insecure")
    else:
        command += [
            "--ssl-ca-certfile",
            str(certs.ca),
            "--ssl-certfile",
            str(certs.folder / "server.pem"),
            "--ssl-keyfile",
            str(certs.folder / "server.key"),
        ]
    if node_auth:
        command.append("--enable-supernode-auth")
    return command


def supernode_command(
    superlink: str,
    node_config: dict[str, str],
    clientappio_address: str,
    *,
    trusted_entities: Path,
    root_certificates: Path | None = None,
    private_key: Path | None = None,
) -> list[str]:
    """A silo's node (`silo_node`): its SuperNode, and the launcher of signed ClientApps."""
    config = " ".join(f"{key}={_toml_string(value)}" for key, value in node_config.items())
    command = [
        sys.executable,
        "-m",
        "finetune.federated.silo_node",
        "--trusted-entities",
        str(trusted_entities),
        "--appio-api-address",
        clientappio_address,
        "--",
        str(BIN / "flower-supernode"),
        "--superlink",
        superlink,
        "--clientappio-api-address",
        clientappio_address,
        "--isolation",
        "process",
        "--node-config",
        config,
    ]
    if root_certificates is None:
        command.append("--insecure")
    else:
        command += ["--root-certificates", str(root_certificates)]
    if private_key is not None:
        command += ["--auth-supernode-private-key", str(private_key)]
    return command


UNREGISTERED = "No SuperNode found with the given public key"
STOP_GRACE_S = 15.0


def run_supernode(command: list[str], registration_wait_s: float) -> int:
    """Run a silo's SuperNode until it stops; returns its exit code. A SuperNode that the
    SuperLink refuses because its key is not registered stops working but does not exit, not
    even on SIGTERM, so it is killed here and started again while the coordinator may still be
    registering keys (`federated serve` registers them only after its SuperLink is up), for at
    most `registration_wait_s` seconds. SIGTERM and SIGINT are passed on to the SuperNode."""
    deadline = time.monotonic() + registration_wait_s
    while True:
        # Its own process group, so that stopping it stops its SuperExec too.
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=environment(),
            start_new_session=True,
        )
        refused = threading.Event()
        relay = threading.Thread(target=_relay_output, args=(process, refused), daemon=True)
        relay.start()
        forward = {
            sig: signal.signal(sig, lambda s, _, child=process: stop_group(child, s))
            for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            code = process.wait()
        finally:
            for sig, handler in forward.items():
                signal.signal(sig, handler)
        relay.join(timeout=5)
        if not refused.is_set():
            return code
        if time.monotonic() > deadline:
            print(
                f"the coordinator has not registered this silo's public key within "
                f"{registration_wait_s:g} s: send it the public key that belongs to "
                f"--auth-key, for its authorized_silo_keys",
                file=sys.stderr,
            )
            return 2
        time.sleep(REGISTRATION_RETRY_S)


def _relay_output(process: subprocess.Popen, refused: threading.Event) -> None:
    for line in process.stdout:
        sys.stdout.buffer.write(line)
        sys.stdout.flush()
        if UNREGISTERED.encode() in line and not refused.is_set():
            refused.set()
            signal_group(process, signal.SIGKILL)


def stop_group(process: subprocess.Popen, sig: int) -> None:
    """Send `sig` to the process's group, and SIGKILL if it is still there after a grace."""
    signal_group(process, sig)
    killer = threading.Timer(STOP_GRACE_S, signal_group, (process, signal.SIGKILL))
    killer.daemon = True
    killer.start()


def signal_group(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def flower_home(job_dir: Path, transport: Transport) -> Path:
    """The job's Flower configuration (FLWR_HOME): one SuperLink connection, the default."""
    home = job_dir / "flwr"
    home.mkdir(parents=True, exist_ok=True)
    lines = [
        "[superlink]",
        f'default = "{CONNECTION}"',
        "",
        f"[superlink.{CONNECTION}]",
        f'address = "127.0.0.1:{transport.control_port}"',
    ]
    certs = certificates(transport)
    lines.append("insecure = true" if certs is None else f'root-certificates = "{certs.ca}"')
    (home / "config.toml").write_text("\n".join(lines) + "\n")
    return home


class ControlClient:
    """The SuperLink's Control API, for the status of a run (as `flwr ls` shows it)."""

    def __init__(self, transport: Transport):
        address = f"127.0.0.1:{transport.control_port}"
        certs = certificates(transport)
        if certs is None:
            self.channel = grpc.insecure_channel(address)
        else:
            credentials = grpc.ssl_channel_credentials(certs.ca.read_bytes())
            self.channel = grpc.secure_channel(address, credentials)
        self.stub = ControlStub(self.channel)

    def status(self, run_id: int) -> tuple[str, str]:
        """(status, sub-status): ("running", ""), ("finished", "completed"), ..."""
        run = self.stub.ListRuns(ListRunsRequest(run_id=run_id)).run_dict[run_id]
        return run.status.status, run.status.sub_status

    def close(self) -> None:
        self.channel.close()


def flwr(args: list[str], flwr_home: Path, log: Path, timeout: float = 120) -> str:
    """Run the `flwr` CLI against the job's SuperLink; its stdout, or FinetuneError."""
    result = subprocess.run(
        [str(BIN / "flwr"), *args],
        capture_output=True,
        text=True,
        env=environment({"FLWR_HOME": str(flwr_home)}),
        timeout=timeout,
        check=False,
    )
    with log.open("a") as output:
        output.write(f"$ flwr {' '.join(args)}\n{result.stdout}{result.stderr}\n")
    if result.returncode != 0:
        raise FinetuneError(
            ErrorCode.INTERNAL,
            f"flwr {args[0]} failed (exit {result.returncode}); see {log.name}",
        )
    return result.stdout
