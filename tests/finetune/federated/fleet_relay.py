"""A recording relay in front of a SuperLink's Fleet API, for tests: it terminates TLS with
the SuperLink's own certificate, forwards every call unchanged (metadata included, so node
authentication still holds), and keeps every request the silos sent."""

from concurrent import futures
from pathlib import Path

import grpc
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.message.array import Array
from flwr.app.message.arraychunk import ArrayChunk
from flwr.proto.message_pb2 import PushObjectRequest
from flwr.supercore.inflatable.inflatable_object import (
    get_object_children_ids_from_object_content,
    get_object_id,
    get_object_type_from_object_content,
)

PUSH_OBJECT = "/flwr.proto.Fleet/PushObject"
KINDS = {
    cls.__name__: cls
    for cls in (Message, RecordDict, ArrayRecord, Array, ArrayChunk, ConfigRecord, MetricRecord)
}


class FleetRelay:
    def __init__(self, upstream: str, port: int, certificates: Path):
        ca = (certificates / "ca.crt").read_bytes()
        self.channel = grpc.secure_channel(upstream, grpc.ssl_channel_credentials(ca))
        self.requests: list[tuple[str, bytes]] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        self.server.add_generic_rpc_handlers([self])
        key = (certificates / "server.key").read_bytes()
        cert = (certificates / "server.pem").read_bytes()
        credentials = grpc.ssl_server_credentials([(key, cert)])
        self.server.add_secure_port(f"127.0.0.1:{port}", credentials)

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method

        def forward(request: bytes, context: grpc.ServicerContext) -> bytes:
            self.requests.append((method, request))
            metadata = [
                (k, v) for k, v in context.invocation_metadata() if k not in ("user-agent",)
            ]
            try:
                return self.channel.unary_unary(method)(request, metadata=metadata)
            except grpc.RpcError as err:  # the SuperLink's own answer (say, not up yet)
                context.abort(err.code(), err.details())

        return grpc.unary_unary_rpc_method_handler(forward)

    def __enter__(self) -> "FleetRelay":
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(grace=None)
        self.channel.close()

    def pushed_contents(self) -> list[RecordDict]:
        """The content (RecordDict) of every message the silos pushed, rebuilt from the
        objects they uploaded."""
        objects = {}
        for method, request in self.requests:
            if method == PUSH_OBJECT:
                content = PushObjectRequest.FromString(request).object_content
                objects[get_object_id(content)] = content
        kinds = {oid: get_object_type_from_object_content(c) for oid, c in objects.items()}
        unexpected = set(kinds.values()) - set(KINDS)
        assert not unexpected, f"objects of unexpected kinds: {unexpected}"

        def inflate(oid: str) -> object:
            content = objects[oid]
            children = {c: inflate(c) for c in get_object_children_ids_from_object_content(content)}
            return KINDS[kinds[oid]].inflate(content, children)

        return [inflate(oid) for oid, kind in kinds.items() if kind == "RecordDict"]
