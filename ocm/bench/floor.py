"""
The floor: the least Python that does the daemon's per-datagram work, to
measure ocm against. One process, no Twisted: a blocking C{recvfrom} loop
that finds the member by token, opens the datagram (one AES-GCM decrypt),
and for a SEND (or a version 1 CHAT) seals the event once per member and
C{sendto}s it: MESSAGE to the others, ECHO to the sender, as ocm does.

It skips what a real server must do and costs little (the replay window,
the msg_id window, history, the token's IP, liveness, rate limits, events
other than MESSAGE and ECHO), so ocm can only come
close to it, never pass it. Joins come in over plain TCRP, served one at a
time by a thread with the same codec the daemon uses; join speed is not
what the floor is for.

    python -m ocm.bench.floor --tcp PORT --udp PORT [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import base64
import secrets
import socket
import struct
import threading
import time
from typing import Any, Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ocm.server.tcrp_server import complete_body
from ocm.server.relay import enlarge_buffers
from ocm.wire.tcrp import Op, ProtocolError, RequestParser, Status, encode_complete, encode_response


class Room:
    __slots__ = ("members", "seq")

    def __init__(self) -> None:
        self.members: list[Member] = []  # a list: appended by the TCRP thread while the loop reads it
        self.seq = 0


class Member:
    __slots__ = ("name", "aead", "room", "address", "sent")

    def __init__(self, name: str, key: bytes, room: Room) -> None:
        self.name = name.encode()
        self.aead = AESGCM(key)
        self.room = room
        self.address: Any = None
        self.sent = 0


class Floor:
    def __init__(self, host: str, tcp_port: int, udp_port: int) -> None:
        self.rooms: dict[str, Room] = {}
        self.tokens: dict[bytes, Member] = {}
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        enlarge_buffers(self.udp)
        self.udp.bind((host, udp_port))
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((host, tcp_port))
        self.tcp.listen(512)

    # -- joins, on a thread -------------------------------------------------

    def serve_joins(self) -> None:
        while True:
            conn, _ = self.tcp.accept()
            with conn:
                conn.settimeout(10)
                try:
                    self._answer(conn)
                except OSError:
                    pass

    def _answer(self, conn: socket.socket) -> None:
        parser = RequestParser()
        request = None
        try:
            while request is None:
                data = conn.recv(65536)
                if not data:
                    return
                request = parser.feed(data)
            body = self._join(request)
        except ProtocolError as e:
            header = parser.header
            conn.sendall(encode_response(header.op if header else 0, parser.room_bytes, e.status, e.message))
            return
        op, room = parser.header.op, parser.room_bytes
        conn.sendall(encode_response(op, room, Status.OK, "ok") + encode_complete(op, room, body))

    def _join(self, request: Any) -> dict[str, Any]:
        if request.op == Op.LIST_ROOMS:
            return {"rooms": [{"name": n, "members": len(r.members), "password": False}
                              for n, r in self.rooms.items()]}
        room = self.rooms.get(request.room)
        if request.op == Op.CREATE_ROOM:
            if room is not None:
                raise ProtocolError(Status.CONFLICT, "room exists")
            room = self.rooms[request.room] = Room()
        elif room is None:
            raise ProtocolError(Status.NOT_FOUND, "no such room")
        key = secrets.token_bytes(32)
        token = secrets.token_hex(16)
        member = Member(request.username, key, room)
        self.tokens[token.encode()] = member
        room.members.append(member)
        return {
            "token": token, "key": base64.b64encode(key).decode(),
            "udp_port": self.udp.getsockname()[1], "host": len(room.members) == 1,
            "members": [m.name.decode() for m in room.members], "timeout": 3600,
        }

    # -- the loop being measured ---------------------------------------------

    def relay(self) -> None:
        recvfrom = self.udp.recvfrom
        on_datagram = self.on_datagram()
        while True:
            on_datagram(*recvfrom(8192))

    def on_datagram(self) -> Callable[[bytes, Any], None]:
        """The per-datagram work, as a closure over what it needs."""
        sendto = self.udp.sendto
        tokens = self.tokens
        nonce = struct.Struct(">IQ").pack
        head = struct.Struct(">BQQB").pack
        clock = time.time

        def on_datagram(data: bytes, address: Any) -> None:
            try:
                room_size = data[0]
                h = 2 + room_size + data[1]
                member = tokens.get(data[2 + room_size : h])
                if member is None:
                    return
                inner = member.aead.decrypt(data[h : h + 12], data[h + 12 :], data[:h])
            except (IndexError, ValueError, InvalidTag):
                return
            member.address = address
            kind = inner[:1]
            if kind == b"\x05":  # SEND: MESSAGE to the others, ECHO to the sender
                text, echo_text = inner[5:], inner[1:5]
            elif kind == b"\x01":  # CHAT: MESSAGE to all
                text, echo_text = inner[1:], None
            else:
                return
            room = member.room
            room.seq += 1
            name = member.name
            now_ms = int(clock() * 1000)
            event = head(1, room.seq, now_ms, len(name)) + name + text
            echo = event if echo_text is None else head(9, room.seq, now_ms, len(name)) + name + echo_text
            for m in room.members:
                to = m.address
                if to is not None:
                    m.sent += 1
                    n = nonce(2, m.sent)
                    try:
                        sendto(n + m.aead.encrypt(n, echo if m is member else event, None), to)
                    except OSError:
                        pass

        return on_datagram

    def relay_twisted(self) -> None:
        """The same work under Twisted's reactor, to tell its cost apart."""
        from twisted.internet import reactor
        from twisted.internet.protocol import DatagramProtocol

        self.udp.setblocking(False)
        protocol = DatagramProtocol()
        protocol.datagramReceived = self.on_datagram()  # type: ignore[method-assign]
        reactor.adoptDatagramPort(self.udp.fileno(), socket.AF_INET, protocol, maxPacketSize=8192)
        reactor.run()


class _WallClock:
    """Enough of IReactorTime for RoomService without a reactor (no sweep)."""

    seconds = staticmethod(time.time)

    def callLater(self, *args: Any, **kw: Any) -> Any:
        raise RuntimeError("no reactor here")


class _SocketTransport:
    """Enough of a UDP transport for ocm's Relay: its socket and port."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock

    def getHost(self) -> Any:
        return type("Host", (), {"port": self.socket.getsockname()[1]})()


class OcmPlain(Floor):
    """
    ocm's own Relay and RoomService, fed by the floor's plain recvfrom loop
    instead of Twisted's reactor: a diagnostic that tells the cost of ocm's
    per-datagram code apart from the cost of the daemon around it. Joins are
    made before any chat (the bench does that), so the TCRP thread never
    changes a room while the loop walks it.
    """

    def __init__(self, host: str, tcp_port: int, udp_port: int) -> None:
        super().__init__(host, tcp_port, udp_port)
        from ocm.server.relay import Relay
        from ocm.server.rooms import RoomService

        self.service = RoomService(_WallClock(), max_rooms=100_000, max_members=10_000)
        self.ocm_relay = Relay(self.service)
        self.ocm_relay.transport = _SocketTransport(self.udp)
        self.ocm_relay.startProtocol()

    def _join(self, request: Any) -> dict[str, Any]:
        if request.op == Op.CREATE_ROOM:
            member = self.service.create_room(request.room, request.username, "127.0.0.1", None)
        elif request.op == Op.JOIN_ROOM:
            member = self.service.join_room(request.room, request.username, "127.0.0.1")
        else:
            return {"rooms": self.service.list_rooms()}
        return complete_body(self.service, member)

    def relay(self) -> None:
        recvfrom = self.udp.recvfrom
        on_datagram = self.ocm_relay.datagramReceived
        while True:
            on_datagram(*recvfrom(8192))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ocm.bench.floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--tcp", type=int, required=True)
    parser.add_argument("--udp", type=int, required=True)
    parser.add_argument("--twisted", action="store_true",
                        help="read UDP through Twisted's reactor instead of a plain loop")
    parser.add_argument("--ocm-code", action="store_true",
                        help="run ocm's Relay and RoomService in the plain loop (a diagnostic)")
    args = parser.parse_args(argv)
    floor = (OcmPlain if args.ocm_code else Floor)(args.host, args.tcp, args.udp)
    threading.Thread(target=floor.serve_joins, daemon=True).start()
    print(f"floor listening: TCRP on {args.host}:{args.tcp}, UDP on port {args.udp}", flush=True)
    try:
        floor.relay_twisted() if args.twisted else floor.relay()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
