"""
ocm-client against a cluster: a JOIN through a node that does not hold the
room follows the 307 once, and verifies the node it is sent to by the
cluster rule of PROTOCOL §5 (the same certificate is accepted there).
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

from ocm.server import tls
from ocm.client.tcrp import redirect_target
from ocm.client.trust import KnownServers, NoTLS, PinnedTrust
from ocm.server.service import OcmService
from ocm.wire.tcrp import encode_response
from tests.redis import RedisServer
from tests.test_client import ClientTestCase, until


class RedirectTests(ClientTestCase):
    timeout = 60

    async def cluster(self, *certs: tuple[Path, Path]) -> list[OcmService]:
        self.redis = RedisServer(self)
        await self.redis.start()
        nodes = []
        for cert, key in certs:
            nodes.append(self.start_daemon(
                "--redis", self.redis.url, "--redis-ttl", "1",
                "--tls-cert", str(cert), "--tls-key", str(key),
            ))
        return nodes

    def certificate(self) -> tuple[Path, Path]:
        cert, key, _ = tls.ensure_certificate(Path(self.mktemp()))
        return cert, key

    async def test_join_through_another_node_follows_the_redirect_and_chats(self) -> None:
        shared = self.certificate()
        a, b = await self.cluster(shared, shared)
        alice = self.client("alice", "Lobby", mode="create", server=self.server(port=a.tcp_port))
        await until(lambda: "lobby" in a.rooms.rooms, "the room on node A")
        self.svc = a  # where bob ends up, for joined()
        bob = self.client("bob", "lobby", server=self.server(port=b.tcp_port))
        await bob.joined()
        self.assertIn(f"Room 'lobby' is on 127.0.0.1:{a.tcp_port} (a node of the same cluster); going there.", bob.err)
        self.assertIn("Joined room 'Lobby' as 'bob'. Members: alice, bob.", bob.err)  # the name as created (COMPLETE's room)
        bob.type("hello across nodes")
        await alice.shows("bob: hello across nodes")
        # Pinned once at B; the same certificate accepted and pinned at A.
        fp = tls.pem_fingerprint(shared[0].read_bytes())
        known = KnownServers(self.known)
        self.assertEqual(known.lookup(f"127.0.0.1:{b.tcp_port}"), fp)
        self.assertEqual(known.lookup(f"127.0.0.1:{a.tcp_port}"), fp)
        self.assertNoTraceback(bob)

    async def test_a_node_with_another_certificate_is_refused_before_sending(self) -> None:
        a, b = await self.cluster(self.certificate(), self.certificate())
        # Alice pins in a file of her own: bob has never seen node A.
        alices = PinnedTrust(KnownServers(Path(self.mktemp())), self.pin_notices.append)
        alice = self.client("alice", "Lobby", mode="create", server=self.server(alices, a.tcp_port))
        await until(lambda: "lobby" in a.rooms.rooms, "the room on node A")
        self.svc = b
        bob = self.client("bob", "Lobby", mode="join", password="hunter2", server=self.server(port=b.tcp_port))
        self.assertEqual(await bob.exit_code(), 1)
        self.assertIn(f"redirected the request to 127.0.0.1:{a.tcp_port}, which shows another certificate", bob.err)
        self.assertEqual(list(a.rooms.rooms["lobby"].members), ["alice"])
        self.assertNoTraceback(bob)
        await alice.stop()

    async def test_one_redirect_is_followed_not_two(self) -> None:
        ports: list[int] = []

        class Elsewhere(Protocol):
            def dataReceived(self, data: bytes) -> None:
                there = f"127.0.0.1:{ports[1 - ports.index(self.transport.getHost().port)]}"
                self.transport.write(encode_response(data[1], data[32:32 + data[0]], 307, "not here", tcp=there))
                self.transport.loseConnection()

        for _ in range(2):
            port = reactor.listenTCP(0, Factory.forProtocol(Elsewhere), interface="127.0.0.1")
            self.addCleanup(port.stopListening)
            ports.append(port.getHost().port)
        r = self.client("bob", "Lobby", mode="join", server=self.server(NoTLS(), ports[0]))
        self.assertEqual(await r.exit_code(), 1)
        self.assertIn(f"127.0.0.1:{ports[1]} redirected the request again (to 127.0.0.1:{ports[0]}); "
                      "a client follows one redirect.", r.err)

    def test_redirect_targets(self) -> None:
        self.assertEqual(redirect_target("node1.example:9001"), ("node1.example", 9001))
        self.assertEqual(redirect_target("[::1]:9001"), ("::1", 9001))
        for bad in (None, 9001, "", "host", "host:0", "host:70000", "::1:9001", "a b:1", "h/x:1", ":9001"):
            self.assertIsNone(redirect_target(bad), bad)
