#!/usr/bin/env python3
"""Fuzz the API's request decoding: V2Ray's protobuf messages (``protocols/protobuf.py``,
``api/messages.py``) and what HandlerService makes of them (``api/convert.py``: the
config-file JSON of an added inbound, outbound or VMess user).

The fuzzer picks the request type; the rest of the input is the message. Decoded
AddInbound/AddOutbound/AlterInbound requests are converted as the service would.

Allowed: ProtobufError, ApiError. Anything else is a finding.

    python fuzz/fuzz_api.py [libFuzzer args]
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from _harness import Chooser, FuzzedDataProvider, instrumented, seed_input

with instrumented(__name__):
    from raybridge.api import messages as pb
    from raybridge.api.convert import (
        ApiError,
        inbound_json,
        outbound_json,
        unpack,
        vmess_client,
    )
    from raybridge.protocols.protobuf import Message, ProtobufError

NAME = "api"
REQUESTS: tuple[type[Message], ...] = (
    pb.AddInboundRequest,
    pb.AddOutboundRequest,
    pb.AlterInboundRequest,
    pb.GetStatsRequest,
    pb.QueryStatsRequest,
    pb.RemoveInboundRequest,
)


@dataclass
class Plan:
    kind: int
    payload: bytes


def parse(ch: Chooser) -> Plan:
    return Plan(kind=ch.int("kind", 0, len(REQUESTS) - 1), payload=ch.rest())


def _convert(request: Message) -> str:
    if isinstance(request, pb.AddInboundRequest):
        return str(inbound_json(request.inbound)["protocol"])
    if isinstance(request, pb.AddOutboundRequest):
        return str(outbound_json(request.outbound)["protocol"])
    if isinstance(request, pb.AlterInboundRequest):
        operation = unpack(request.operation, pb.AddUserOperation, "operation")
        return str(vmess_client(operation.user)["id"])
    return type(request).__name__


def run(data: bytes) -> list[str]:
    """Feed one input; return what happened (then "error" if it failed)."""
    plan = parse(Chooser(FuzzedDataProvider(data)))
    try:
        request = REQUESTS[plan.kind].decode(plan.payload)
        if request.encode() is None:  # re-encoding must work on whatever decoded
            raise TypeError("encode returned None")
        return [_convert(request)]
    except (ProtobufError, ApiError):
        return ["error"]


def TestOneInput(data: bytes) -> None:
    run(data)


def _receiver(port: int) -> pb.TypedMessage:
    return pb.TypedMessage.of(
        pb.ReceiverConfig(
            port_range=pb.PortRange(From=port, To=port),
            listen=pb.IPOrDomain(ip=bytes([127, 0, 0, 1])),
        )
    )


def _user() -> pb.User:
    account = pb.VMessAccount(id="b831381d-6324-4d53-ad4f-8cda48b30811", alter_id=0)
    return pb.User(level=1, email="a@b", account=pb.TypedMessage.of(account))


def seeds() -> dict[str, bytes]:
    socks = pb.AddInboundRequest(
        inbound=pb.InboundHandlerConfig(
            tag="socks",
            receiver_settings=_receiver(1080),
            proxy_settings=pb.TypedMessage.of(
                pb.SocksServerConfig(auth_type=1, accounts={"u": "p"}, udp_enabled=True)
            ),
        )
    )
    vmess = pb.AddInboundRequest(
        inbound=pb.InboundHandlerConfig(
            tag="vmess",
            receiver_settings=_receiver(443),
            proxy_settings=pb.TypedMessage.of(pb.VMessInboundConfig(user=[_user()])),
        )
    )
    door = pb.AddInboundRequest(
        inbound=pb.InboundHandlerConfig(
            receiver_settings=_receiver(53),
            proxy_settings=pb.TypedMessage.of(
                pb.DokodemoConfig(
                    address=pb.IPOrDomain(domain="example.com"), port=53, networks=[2, 3]
                )
            ),
        )
    )
    outbound = pb.AddOutboundRequest(
        outbound=pb.OutboundHandlerConfig(
            tag="out",
            sender_settings=pb.TypedMessage.of(
                pb.SenderConfig(
                    multiplex_settings=pb.MultiplexingConfig(enabled=True, concurrency=8)
                )
            ),
            proxy_settings=pb.TypedMessage.of(
                pb.VMessOutboundConfig(
                    Receiver=[
                        pb.ServerEndpoint(
                            address=pb.IPOrDomain(domain="example.com"), port=443, user=[_user()]
                        )
                    ]
                )
            ),
        )
    )
    alter = pb.AlterInboundRequest(
        tag="vmess", operation=pb.TypedMessage.of(pb.AddUserOperation(user=_user()))
    )
    index = {kind: i for i, kind in enumerate(REQUESTS)}
    return {
        name: seed_input(parse, {"kind": index[type(message)]}, message.encode())
        for name, message in {
            "add-socks": socks,
            "add-vmess": vmess,
            "add-dokodemo": door,
            "add-vmess-outbound": outbound,
            "add-user": alter,
            "query": pb.QueryStatsRequest(pattern="user>>>", reset=True),
        }.items()
    }


if __name__ == "__main__":
    import atheris

    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
