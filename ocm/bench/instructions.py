"""
Instructions per datagram, for comparing datagram paths without the
machine's noise: run under C{valgrind --tool=callgrind} twice, with and
without the datagrams, and divide the difference (docs/performance.md).

One process, no reactor: ROOMS rooms of MEMBERS members joined through the
room service's own calls, every member's address a loopback sink socket,
then one datagram from every member (so each has its state: an address, a
send window, a room history that is full with --history 5), then DATAGRAMS
client datagrams from random members handed to the daemon's datagram
handler (ocm's C{Relay}, or the floor's function) with real C{sendto}s. A
run with C{--datagrams 0} does all but the last step.

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python -m ocm.bench.instructions --server ocm --kind send --datagrams 2000
"""

from __future__ import annotations

import argparse
import base64
import random
import socket
import time
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ocm.server.tcrp_server import complete_body
from ocm.wire import datagram
from ocm.bench.floor import Floor, _SocketTransport, _WallClock
from ocm.wire.tcrp import Op, Request


def build(server: str, rooms: int, members: int, history: int) -> tuple[Any, Any, list[tuple[bytes, bytes, AESGCM]]]:
    """The handler, the sink's address, and (room, token, aead) of every member."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
    address = sink.getsockname()
    floor = Floor("127.0.0.1", 0, 0)
    if server == "ocm":
        from ocm.server.relay import Relay
        from ocm.server.rooms import RoomService

        extra = {"history": history} if history >= 0 else {}  # a version 1 tree has no history
        service = RoomService(
            _WallClock(), max_rooms=rooms + 1, max_members=members + 1, member_rate=0, **extra
        )
        relay = Relay(service)
        relay.transport = _SocketTransport(floor.udp)
        relay.startProtocol()
        handler = relay.datagramReceived

        def join(op: Op, room: str, user: str) -> dict[str, Any]:
            if op == Op.CREATE_ROOM:
                m = service.create_room(room, user, "127.0.0.1", None)
            else:
                m = service.join_room(room, user, "127.0.0.1")
            m.address = address
            return complete_body(service, m)
    else:
        handler = floor.on_datagram()

        def join(op: Op, room: str, user: str) -> dict[str, Any]:
            body = floor._join(Request(op, room, user))
            floor.tokens[body["token"].encode()].address = address
            return body

    everyone = []
    for r in range(rooms):
        for i in range(members):
            body = join(Op.CREATE_ROOM if i == 0 else Op.JOIN_ROOM, f"room{r}", f"user{i}")
            everyone.append((f"room{r}".encode(), body["token"].encode(), AESGCM(base64.b64decode(body["key"]))))
    return handler, address, everyone


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ocm.bench.instructions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=("ocm", "floor"), default="ocm")
    parser.add_argument("--kind", choices=("chat", "send"), default="send")
    parser.add_argument("--rooms", type=int, default=500)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--datagrams", type=int, default=2000)
    parser.add_argument("--history", type=int, default=5,
                        help="messages a room keeps (small, so the runs see a full history; -1: a tree without)")
    args = parser.parse_args(argv)
    handler, source, everyone = build(args.server, args.rooms, args.members, args.history)
    rng = random.Random(1)
    counters: dict[bytes, int] = {}
    text = "m" + "x" * 63

    def seal(member: tuple[bytes, bytes, AESGCM]) -> bytes:
        room, token, aead = member
        counters[token] = counter = counters.get(token, 0) + 1
        inner = datagram.send(counter, text) if args.kind == "send" else datagram.chat(text)
        return datagram.seal_client(aead, room, token, counter, inner)

    for member in everyone:
        handler(seal(member), source)
    prepared = [seal(rng.choice(everyone)) for _ in range(args.datagrams)]
    start = time.perf_counter()
    for data in prepared:
        handler(data, source)
    elapsed = time.perf_counter() - start
    if args.datagrams:
        print(f"{args.server} {args.kind}: {elapsed / args.datagrams * 1e6:.1f} us per datagram (not under valgrind: noisy)")


if __name__ == "__main__":
    main()
