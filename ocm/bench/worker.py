"""
The generator's UDP side: one plain-socket process (no Twisted, no event
objects) that sends sealed SEND datagrams (protocol 1.1, what clients send)
for its share of the members at a fixed rate and reads the events of a few
members per room: the MESSAGEs of others and the ECHOs of its own sends.

It talks to the orchestrator in JSON lines: a config on stdin, then
C{{"ready": ...}} on stdout, then a C{{"start_at": <monotonic>}} line on stdin,
then progress lines every second and one C{{"result": ...}} line.

Only members chosen as readers have a socket of their own; every other member
sends from one shared sink socket whose receive buffer is as small as the
kernel allows, so the daemon does all its work (one seal and one C{sendto}
per member) while the generator reads a tenth of it or less.
"""

from __future__ import annotations

import base64
import json
import random
import resource
import select
import socket
import sys
import time
from typing import Any, TextIO

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ocm.wire.datagram import HEARTBEAT, DatagramError, EventKind, open_server, seal_client, send

# Latency histogram: 100 µs buckets up to 10 s, then one overflow bucket.
BUCKET_US = 100
BUCKETS = 100_000
# Messages sent in one go before the readers get a turn, when behind.
MAX_BATCH = 200
TAG_WARMUP = "w"
TAG_MEASURED = "m"
STAMP_SIZE = 17  # tag + 16 hex digits of send time in monotonic ns
READER_BUFFER = 4 * 1024 * 1024


class Sender:
    __slots__ = ("room_index", "room", "token", "aead", "counter", "sock", "msg_id", "measured_from")

    def __init__(self, room_index: int, room: bytes, token: bytes, key: bytes, sock: socket.socket) -> None:
        self.room_index = room_index
        self.room = room
        self.token = token
        self.aead = AESGCM(key)
        self.counter = 0
        self.sock = sock
        self.msg_id = 0
        # The first msg_id sent in the measured phase: an ECHO of it or a
        # later one is a measured delivery (an ECHO carries no text to tag).
        self.measured_from = 0

    def seal(self, inner: bytes) -> bytes:
        self.counter += 1
        return seal_client(self.aead, self.room, self.token, self.counter, inner)


class Reader:
    __slots__ = ("sock", "aead", "room_index", "sender")

    def __init__(self, sock: socket.socket, key: bytes, room_index: int) -> None:
        self.sock = sock
        self.aead = AESGCM(key)
        self.room_index = room_index
        self.sender: Sender | None = None  # the member this reader is


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _emit(out: TextIO, value: dict[str, Any]) -> None:
    out.write(json.dumps(value) + "\n")
    out.flush()


class Worker:
    def __init__(self, config: dict[str, Any]) -> None:
        self.server = (config["host"], config["udp_port"])
        self.rate = float(config["rate"])
        self.size = max(STAMP_SIZE, int(config["size"]))
        self.warmup = float(config["warmup"])
        self.duration = float(config["duration"])
        self.drain = float(config["drain"])
        self.senders: list[Sender] = []
        self.readers: dict[int, Reader] = {}
        self.room_readers: list[int] = []
        self.sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
        self.sink.bind((config.get("bind", "0.0.0.0"), 0))
        for room_index, (room, members) in enumerate(config["rooms"]):
            room_bytes = room.encode()
            readers = 0
            for token, key_b64, is_reader in members:
                key = base64.b64decode(key_b64)
                sock = self.sink
                if is_reader:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, READER_BUFFER)
                    sock.bind((config.get("bind", "0.0.0.0"), 0))
                    reader = self.readers[sock.fileno()] = Reader(sock, key, room_index)
                    readers += 1
                sender = Sender(room_index, room_bytes, token.encode(), key, sock)
                if is_reader:
                    reader.sender = sender
                self.senders.append(sender)
            self.room_readers.append(readers)
        rooms = len(self.room_readers)
        self.sent = [0] * rooms  # measured messages sent, per room
        self.received = [0] * rooms  # measured MESSAGE events read, per room
        self.total_sent = 0
        self.total_read = 0
        self.undecodable = 0
        self.histogram = [0] * (BUCKETS + 1)
        self.poller = select.epoll()
        for fd in self.readers:
            self.poller.register(fd, select.EPOLLIN)

    def register(self) -> None:
        """One HEARTBEAT per member, so the daemon learns every address."""
        for s in self.senders:
            s.sock.sendto(s.seal(HEARTBEAT), self.server)
        # Let the heartbeats land, then throw away whatever came back.
        time.sleep(0.2)
        self.read(time.monotonic_ns(), count=False)

    def read(self, now_ns: int, count: bool = True) -> None:
        for fd in list(self.readers):
            self._read(self.readers[fd], now_ns, count)

    def _read(self, reader: Reader, now_ns: int, count: bool = True) -> None:
        recv = reader.sock.recv
        aead = reader.aead
        histogram = self.histogram
        while True:
            try:
                data = recv(8192, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            self.total_read += 1
            if not count:
                continue
            try:
                _, event = open_server(aead, data)
            except DatagramError:
                self.undecodable += 1
                continue
            if event.kind == EventKind.ECHO:
                sender = reader.sender
                if sender.measured_from and event.msg_id >= sender.measured_from:
                    self.received[reader.room_index] += 1
                continue
            if event.kind != EventKind.MESSAGE or event.text[:1] != TAG_MEASURED:
                continue
            self.received[reader.room_index] += 1
            latency_us = (now_ns - int(event.text[1:STAMP_SIZE], 16)) // 1000
            histogram[min(BUCKETS, max(0, latency_us) // BUCKET_US)] += 1

    def run(self, start_at: float, out: TextIO) -> dict[str, Any]:
        senders = self.senders[:]
        random.shuffle(senders)
        count = len(senders)
        total_rate = count * self.rate
        measure_from = start_at + self.warmup
        send_until = measure_from + self.duration
        stop_at = send_until + self.drain
        pad = "x" * (self.size - STAMP_SIZE)
        server = self.server
        sent = self.sent
        poll = self.poller.poll
        readers = self.readers
        monotonic = time.monotonic
        monotonic_ns = time.monotonic_ns
        k = 0
        next_progress = start_at + 1.0
        cpu_start = cpu_end = None
        send_errors = 0
        delay = start_at - monotonic()
        if delay > 0:
            time.sleep(delay)
        while True:
            now = monotonic()
            if now >= stop_at:
                break
            timeout = stop_at - now
            if now < send_until:
                due = int((now - start_at) * total_rate)
                batch = min(due - k, MAX_BATCH)
                measured = now >= measure_from
                if measured and cpu_start is None:
                    cpu_start = _cpu()
                tag = TAG_MEASURED if measured else TAG_WARMUP
                for _ in range(batch):
                    s = senders[k % count]
                    k += 1
                    text = f"{tag}{monotonic_ns():016x}{pad}"
                    s.msg_id += 1
                    if measured and not s.measured_from:
                        s.measured_from = s.msg_id
                    try:
                        s.sock.sendto(s.seal(send(s.msg_id, text)), server)
                    except OSError:
                        send_errors += 1
                        continue
                    if measured:
                        sent[s.room_index] += 1
                self.total_sent += batch
                timeout = 0.0 if due > k else max(0.0, start_at + (k + 1) / total_rate - monotonic())
            elif cpu_end is None:
                cpu_end = _cpu()
            for fd, _ in poll(min(timeout, 0.05)):
                self._read(readers[fd], monotonic_ns())
            if now >= next_progress:
                next_progress += 1.0
                _emit(out, {"progress": {"sent": self.total_sent, "read": self.total_read}})
        if cpu_start is None:
            cpu_start = _cpu()
        if cpu_end is None:
            cpu_end = _cpu()
        return {
            "sent": sum(sent),
            "expected": sum(n * r for n, r in zip(sent, self.room_readers)),
            "received": sum(self.received),
            "read": self.total_read,
            "undecodable": self.undecodable,
            "send_errors": send_errors,
            "cpu": cpu_end - cpu_start,
            "histogram": {str(i): n for i, n in enumerate(self.histogram) if n},
        }


def main(stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> None:
    config = json.loads(stdin.readline())
    worker = Worker(config)
    worker.register()
    _emit(stdout, {"ready": {"members": len(worker.senders), "readers": len(worker.readers)}})
    go = json.loads(stdin.readline())
    _emit(stdout, {"result": worker.run(float(go["start_at"]), stdout)})


if __name__ == "__main__":
    main()
