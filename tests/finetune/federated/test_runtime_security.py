"""Who can start work on the federation's machines: the Control API answers on the
coordinator's loopback only (it has no authentication), a silo runs only Flower Apps signed
by a key it trusts, and an insecure SuperLink stays on loopback. Real SuperLink, SuperNode
and `flwr` processes, no training."""

import json
import subprocess
import time
from pathlib import Path

import pytest

from finetune.cli import main
from finetune.federated import runtime
from finetune.federated.config import Transport, load_federated_config
from finetune.federated.signing import load_signing_key, sign_app, write_signing_key
from finetune.federated.silo_node import REFUSED
from tests.finetune.federated.conftest import make_certificates, make_silo_key, write_config

# A Flower App as an intruder would send it: its ClientApp leaves a file where the run
# config says, so that the test sees whether it ran on the silo.
PROBE_APP = {
    "pyproject.toml": """
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "probe"
version = "1.0.0"
dependencies = ["flwr>=1.32,<1.33"]

[tool.flwr.app]
publisher = "intruder"

[tool.flwr.app.components]
serverapp = "probe:server"
clientapp = "probe:client"

[tool.flwr.app.config]
marker = ""
fab-signature = ""
""",
    "probe.py": """
import time
from pathlib import Path

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

client = ClientApp()
server = ServerApp()


@client.train()
def train(msg, context):
    Path(str(context.run_config["marker"])).write_text("ran on the silo")
    return Message(RecordDict({"r": ConfigRecord({"ok": 1})}), reply_to=msg)


@server.main()
def main(grid, context):
    nodes = []
    while not nodes:
        nodes = list(grid.get_node_ids())
        time.sleep(0.2)
    messages = [
        Message(RecordDict(), dst_node_id=node, message_type="train") for node in nodes
    ]
    grid.send_and_receive(messages, timeout=60)
""",
}


def _wait_for(predicate, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def _transport(**keys) -> Transport:
    ports = {p: runtime.free_port() for p in ("fleet_port", "serverapp_port", "control_port")}
    return Transport(**ports, **keys)


def _start_superlink(
    processes: runtime.Processes, transport: Transport, folder: Path, node_auth: bool
) -> tuple[subprocess.Popen, Path]:
    log = folder / "superlink.log"
    processes.app_addresses.append(f"127.0.0.1:{transport.serverapp_port}")
    superlink = processes.start(
        "superlink",
        runtime.superlink_command(transport, folder, node_auth),
        log,
        runtime.environment({"FLWR_HOME": str(folder / "flwr-superlink")}),
    )
    runtime.wait_for_port(transport.host, transport.fleet_port, superlink, "SuperLink", log)
    return superlink, log


def _start_silo(
    processes: runtime.Processes, transport: Transport, folder: Path, name: str, **keys
) -> Path:
    clientappio = f"127.0.0.1:{runtime.free_port()}"
    processes.app_addresses.append(clientappio)
    command = runtime.supernode_command(
        f"{transport.host}:{transport.fleet_port}",
        {"silo-id": name, "data": str(folder)},
        clientappio,
        **keys,
    )
    log = folder / f"silo-{name}.log"
    processes.start(
        name, command, log, runtime.environment({"FLWR_HOME": str(folder / f"flwr-{name}")})
    )
    return log


def test_a_node_not_in_authorized_silo_keys_cannot_join_through_the_control_api(
    tmp_path: Path,
) -> None:
    # 127.0.0.2 stands for the address silos reach: the SuperLink's Fleet API listens there.
    certificates = make_certificates(tmp_path / "certs", "127.0.0.2")
    transport = _transport(host="127.0.0.2", certificates=str(certificates))
    intruder_key, intruder_public = make_silo_key(tmp_path, "intruder")
    _, trusted = write_signing_key(tmp_path, "coordinator")
    processes = runtime.Processes()
    try:
        _start_superlink(processes, transport, tmp_path, node_auth=True)
        # The intruder points `flwr` at the address it can reach, as an operator would.
        home = tmp_path / "intruder-flwr"
        home.mkdir()
        (home / "config.toml").write_text(
            '[superlink]\ndefault = "target"\n\n[superlink.target]\n'
            f'address = "{transport.host}:{transport.control_port}"\n'
            f'root-certificates = "{certificates / "ca.crt"}"\n'
        )
        try:
            attempt = subprocess.run(
                [str(runtime.BIN / "flwr"), "supernode", "register", str(intruder_public)],
                capture_output=True,
                text=True,
                env=runtime.environment({"FLWR_HOME": str(home)}),
                timeout=60,
                check=False,
            )
            said = attempt.stdout + attempt.stderr
            assert attempt.returncode != 0, f"the intruder registered its key: {said}"
        except subprocess.TimeoutExpired:
            pass  # no answer from the Control API at that address: not registered either
        log = _start_silo(
            processes,
            transport,
            tmp_path,
            "intruder",
            trusted_entities=trusted,
            root_certificates=certificates / "ca.crt",
            private_key=intruder_key,
        )
        _wait_for(lambda: runtime.UNREGISTERED in log.read_text(), "the SuperLink's refusal")
    finally:
        processes.stop()


@pytest.mark.slow
def test_an_unsigned_bundle_is_refused_by_a_silo(tmp_path: Path) -> None:
    app = tmp_path / "probe-app"
    app.mkdir()
    for name, text in PROBE_APP.items():
        (app / name).write_text(text)
    (tmp_path / "silo").mkdir()
    (tmp_path / "other").mkdir()
    trusted_key, trusted = write_signing_key(tmp_path / "silo", "coordinator")
    stranger_key, _ = write_signing_key(tmp_path / "other", "stranger")
    transport = _transport()
    processes = runtime.Processes()
    try:
        superlink, log = _start_superlink(processes, transport, tmp_path, node_auth=False)
        runtime.wait_for_port("127.0.0.1", transport.control_port, superlink, "SuperLink", log)
        silo_log = _start_silo(processes, transport, tmp_path, "a", trusted_entities=trusted)
        flwr_home = runtime.flower_home(tmp_path, transport)

        def run(marker: str, signature: str | None) -> tuple[str, Path]:
            config = f"marker={runtime._toml_string(str(tmp_path / marker))}"
            if signature is not None:
                config += f" fab-signature={runtime._toml_string(signature)}"
            args = ["run", str(app), "--run-config", config, "--format", "json"]
            started = runtime.flwr(args, flwr_home, tmp_path / "cli.log")
            return str(json.loads(started)["run-id"]), tmp_path / marker

        def refusal(run_id: str) -> str:
            lines = silo_log.read_text().splitlines()
            return next((line for line in lines if f"{REFUSED} run {run_id} " in line), "")

        stranger = sign_app(load_signing_key(stranger_key, "key"), app)
        for name, signature, reason in [
            ("unsigned", None, "the Flower App is not signed"),
            ("stranger", stranger, "no trusted entity signed this Flower App"),
        ]:
            run_id, marker = run(name, signature)
            _wait_for(lambda r=run_id: refusal(r), f"the silo's refusal of run {run_id}")
            assert refusal(run_id).endswith(reason)
            assert not marker.exists()

        # The same app, signed by the key the silo trusts, runs: the test would see it.
        _, signed = run("signed", sign_app(load_signing_key(trusted_key, "key"), app))
        _wait_for(signed.exists, "the signed app's ClientApp")
    finally:
        processes.stop()


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "coordinator.example.org"])
def test_serve_insecure_on_a_non_loopback_host_is_refused(
    tmp_path: Path, home: Path, host: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = {"base_model": "demo", "transport": {"host": host}}
    assert main(["federated", "serve", str(write_config(tmp_path / "f.yaml", data))]) == 2
    err = capsys.readouterr().err
    assert f"transport.host {host} is reachable from other machines" in err
    assert "set transport.certificates" in err and len(err.strip().splitlines()) == 1
    data["transport"]["certificates"] = str(tmp_path)
    assert load_federated_config(write_config(tmp_path / "f.yaml", data)).transport.host == host
    data["transport"] = {"host": "127.0.0.1"}
    assert load_federated_config(write_config(tmp_path / "f.yaml", data)).transport.host
