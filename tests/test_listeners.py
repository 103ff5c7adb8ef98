"""The daemon's listeners as child services (ocm.server.listeners, ocm.server.service)."""

from __future__ import annotations

import socket

from twisted.internet import reactor, task
from twisted.trial.unittest import TestCase

from ocm.bench.spawn import free_port
from ocm.server.tap import Options, makeService


def bindable(kind: int, port: int) -> bool:
    s = socket.socket(socket.AF_INET, kind)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


class ListenerTreeTests(TestCase):
    def service(self, *extra: str):
        o = Options()
        o.parseOptions(["--no-tls", "--interface", "127.0.0.1", "--data-dir", self.mktemp(), *extra])
        return makeService(o)

    async def test_a_later_bind_that_fails_gives_the_earlier_ports_back(self):
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        self.addCleanup(busy.close)
        tcp, udp = free_port(socket.SOCK_STREAM, "127.0.0.1"), free_port(socket.SOCK_DGRAM, "127.0.0.1")
        svc = self.service("--tcp", str(tcp), "--udp", str(udp),
                           "--metrics", f"tcp:{busy.getsockname()[1]}:interface=127.0.0.1")
        with self.assertRaises(Exception):
            svc.privilegedStartService()
        # A port closes on the reactor's next turn.
        await task.deferLater(reactor, 0.05, lambda: None)
        self.assertTrue(bindable(socket.SOCK_STREAM, tcp), "TCRP's port was kept")
        self.assertTrue(bindable(socket.SOCK_DGRAM, udp), "UDP's port was kept")

    async def test_children_bind_in_order_and_stop_in_order(self):
        svc = self.service("--tcp", "0", "--udp", "0", "--metrics", "tcp:0:interface=127.0.0.1")
        self.assertEqual([c.name for c in svc], ["udp", "tcrp", "metrics"])
        svc.privilegedStartService()
        svc.startService()
        first = svc.tcp_port
        self.assertTrue(svc.healthy())
        stopping = svc.stopService()
        self.assertFalse(svc.healthy())
        await stopping
        self.assertEqual((svc.tcp, svc.udp, svc.metrics), (None, None, None))
        await task.deferLater(reactor, 0.05, lambda: None)
        self.assertTrue(bindable(socket.SOCK_STREAM, first))
