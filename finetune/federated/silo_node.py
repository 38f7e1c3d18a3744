"""A silo's node: Flower's SuperNode (`--isolation process`) and, in this process, the
SuperExec that launches its ClientApps, which launches one only for a run whose Flower App a
key among the silo's trusted entities signed (`signing`). For a refused run no ClientApp
starts: the SuperExec answers the coordinator's message with an error saying why.

    python -m finetune.federated.silo_node --trusted-entities FILE \
        --appio-api-address HOST:PORT -- flower-supernode ... --isolation process

The SuperNode runs in this process's group, so stopping the group stops both; when the
SuperNode exits, so does this process."""

import argparse
import subprocess
import sys
from logging import ERROR
from typing import Any

from flwr.app import Message
from flwr.app.error import Error
from flwr.common.constant import ErrorCode, SubStatus
from flwr.common.logger import log
from flwr.proto.clientappio_pb2_grpc import ClientAppIoStub
from flwr.proto.task_pb2 import Task
from flwr.supercore.exit import add_exit_handler
from flwr.supercore.grpc import create_channel
from flwr.supercore.interceptors import (
    AppIoTokenClientInterceptor,
    RuntimeVersionClientInterceptor,
)
from flwr.supercore.superexec.executor import LaunchResult
from flwr.supercore.superexec.plugin import ClientAppExecPlugin
from flwr.supercore.superexec.run_superexec import run_superexec
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

from core.errors import StackError
from finetune.federated.signing import SIGNATURE_KEY, load_trusted_entities, refusal

REFUSED = "refused to run"  # how the log says a run was refused


class SignedClientAppExecPlugin(ClientAppExecPlugin):
    """Flower's ClientApp launcher, for signed Flower Apps only."""

    trusted: dict[str, Any]

    def load_config(self, yaml_config: dict[str, Any]) -> None:
        self.trusted = yaml_config["trusted"]

    def launch_task(self, token: str, task: Task) -> LaunchResult:
        run = self.get_run(task.run_id)
        why = refusal(run.fab_hash, run.override_config.get(SIGNATURE_KEY), self.trusted)
        if why is not None:
            log(ERROR, "%s run %d (Flower App %s): %s", REFUSED, run.run_id, run.fab_id, why)
            self._answer_refusal(token, f"silo {REFUSED} the Flower App: {why}")
            return LaunchResult.failed(why)
        return super().launch_task(token, task)

    def _answer_refusal(self, token: str, reason: str) -> None:
        """Reply to the run's message with an error, as the ClientApp process would have
        (with the task's token), so that the coordinator learns why at once."""
        channel = create_channel(
            server_address=self.appio_api_address,
            insecure=True,
            root_certificates=None,
            interceptors=[
                RuntimeVersionClientInterceptor(component_name="flwr-clientapp"),
                AppIoTokenClientInterceptor(token),
            ],
        )
        try:
            stub = ClientAppIoStub(channel)
            message, context, _, _ = pull_task_input(stub)
            error = Error(code=ErrorCode.INVALID_FAB, reason=reason)
            push_message(stub, Message(error, reply_to=message), context)
            push_task_output(stub, context, SubStatus.FAILED, reason)
        finally:
            channel.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trusted-entities", required=True)
    parser.add_argument("--appio-api-address", required=True)
    parser.add_argument("supernode", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    supernode = [word for word in args.supernode if word != "--"]
    try:
        trusted = load_trusted_entities(args.trusted_entities)
    except StackError as err:
        print(err.message, file=sys.stderr)
        return 2
    node = subprocess.Popen(supernode, stdin=subprocess.DEVNULL)
    add_exit_handler(node.terminate)
    run_superexec(
        plugin_class=SignedClientAppExecPlugin,
        stub_class=ClientAppIoStub,
        appio_api_address=args.appio_api_address,
        insecure=True,  # the ClientAppIo API listens on this machine's loopback only
        plugin_config={"trusted": trusted},
        parent_pid=node.pid,
    )
    return node.wait()


if __name__ == "__main__":
    sys.exit(main())
