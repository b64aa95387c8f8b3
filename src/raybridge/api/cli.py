"""``raybridge api``: call a node's API (raybridge's or V2Ray 4.34's) from the command line.

``v2ctl api`` (4.34) reaches StatsService and LoggerService only; this also reaches
HandlerService's user and removal calls::

    raybridge api --server 127.0.0.1:10085 stats [PATTERN] [--reset]
    raybridge api sys
    raybridge api adduser TAG UUID --email EMAIL [--level N]
    raybridge api rmuser TAG EMAIL
    raybridge api rminbound TAG
    raybridge api rmoutbound TAG
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from typing import Any

DEFAULT_SERVER = "127.0.0.1:10085"


def add_parser(sub: Any) -> None:
    """Register ``api`` on the ``raybridge`` command's subparsers."""
    api = sub.add_parser(
        "api",
        help="call a running node's API (stats, users, removing inbounds and outbounds)",
        description="Call V2Ray's gRPC API of a raybridge or V2Ray node (its api inbound).",
    )
    api.add_argument(
        "--server", default=DEFAULT_SERVER, metavar="HOST:PORT", help=f"default {DEFAULT_SERVER}"
    )
    calls = api.add_subparsers(dest="call", metavar="CALL", required=True)
    stats = calls.add_parser("stats", help="counters whose name contains PATTERN (all)")
    stats.add_argument("pattern", nargs="?", default="")
    stats.add_argument("--reset", action="store_true", help="and set them to 0")
    calls.add_parser("sys", help="the node's runtime figures (GetSysStats)")
    add = calls.add_parser("adduser", help="add a VMess user to inbound TAG")
    add.add_argument("tag")
    add.add_argument("id", type=uuid.UUID, metavar="UUID")
    add.add_argument("--email", required=True, help="the user's name (removal needs it)")
    add.add_argument("--level", type=int, default=0)
    remove = calls.add_parser("rmuser", help="remove the VMess user EMAIL from inbound TAG")
    remove.add_argument("tag")
    remove.add_argument("email")
    for name, what in (("rminbound", "inbound"), ("rmoutbound", "outbound")):
        calls.add_parser(name, help=f"remove the {what} TAG").add_argument("tag")


def cmd_api(args: argparse.Namespace) -> int:
    from grpclib.exceptions import GRPCError

    host, _, port = args.server.rpartition(":")
    if not host or not port.isdigit():
        print(f"raybridge api: --server {args.server!r} is not HOST:PORT", file=sys.stderr)
        return 2
    try:
        for line in asyncio.run(_call(args, host.strip("[]"), int(port))):
            print(line)
    except GRPCError as exc:
        print(f"raybridge api: {exc.status.name}: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:  # TimeoutError included
        print(f"raybridge api: cannot reach {args.server}: {exc}", file=sys.stderr)
        return 1
    return 0


async def _call(args: argparse.Namespace, host: str, port: int) -> list[str]:
    from raybridge.api import messages as pb
    from raybridge.api.client import ApiClient
    from raybridge.api.server import HANDLER, STATS
    from raybridge.protocols.protobuf import Message

    async with ApiClient(host, port, timeout=10) as client:
        if args.call == "stats":
            request = pb.QueryStatsRequest(pattern=args.pattern, reset=args.reset)
            reply = await client.call(STATS, "QueryStats", request, pb.QueryStatsResponse)
            return [f"{s.name} {s.value}" for s in reply.stat]
        if args.call == "sys":
            figures = await client.call(
                STATS, "GetSysStats", pb.SysStatsRequest(), pb.SysStatsResponse
            )
            return [f"{f.name} {getattr(figures, f.name)}" for f in figures.FIELDS]
        operation: Message
        if args.call == "adduser":
            account = pb.VMessAccount(id=str(args.id))
            user = pb.User(level=args.level, email=args.email, account=pb.TypedMessage.of(account))
            operation = pb.AddUserOperation(user=user)
        elif args.call == "rmuser":
            operation = pb.RemoveUserOperation(email=args.email)
        elif args.call == "rminbound":
            await client.call(HANDLER, "RemoveInbound", pb.RemoveInboundRequest(tag=args.tag))
            return []
        else:
            await client.call(HANDLER, "RemoveOutbound", pb.RemoveOutboundRequest(tag=args.tag))
            return []
        alter = pb.AlterInboundRequest(tag=args.tag, operation=pb.TypedMessage.of(operation))
        await client.call(HANDLER, "AlterInbound", alter)
        return []
