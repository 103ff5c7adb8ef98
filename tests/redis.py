"""
A real redis-server for the cluster tests: started on a free loopback port
in a temporary directory, with no persistence (a restart loses everything,
as a Redis without disk does), and stopped after the test.

Without redis-server the tests skip with a loud reason, except under CI
(the environment variable CI set), where they fail: .ci/run installs it.
"""

from __future__ import annotations

import os
import shutil
import socket
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.trial.unittest import SkipTest

from ocm.bench.spawn import free_port

START_TIMEOUT = 10.0


def redis_server_path(test: Any) -> str:
    path = shutil.which("redis-server")
    if path is None:
        reason = (
            "redis-server is not installed, so the cluster tests cannot run: "
            "apt-get install redis-server (CI installs it)"
        )
        if os.environ.get("CI"):
            test.fail(reason)
        raise SkipTest(reason)
    return path


class _Watch(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.ready: defer.Deferred[None] = defer.Deferred()
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.output = b""

    def outReceived(self, data: bytes) -> None:
        self.output = (self.output + data)[-8192:]
        if not self.ready.called and b"ready to accept connections" in self.output.lower():
            self.ready.callback(None)

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError("redis-server exited at start:\n" + self.output.decode(errors="replace")))
        self.ended.callback(None)


class RedisServer:
    """One redis-server process; L{stop} and L{start} again keep the port."""

    def __init__(
        self, test: Any, *, unix: bool = False, tls: tuple[str, str] | None = None,
        password: str | None = None, config: tuple[str, ...] = (),
    ) -> None:
        """
        C{unix}: a Unix socket only; C{tls}: (cert, key) PEM files, TLS only;
        C{password}: required of every client (requirepass); C{config}:
        more redis-server arguments (an ACL user, say).
        """
        self.binary = redis_server_path(test)
        self.port = free_port(socket.SOCK_STREAM, "127.0.0.1")
        self.dir = os.path.abspath(test.mktemp())
        os.makedirs(self.dir)
        self.unix = unix
        self.tls = tls
        self.password = password
        self.config = config
        self.socket = os.path.join(self.dir, "redis.sock")
        self._watch: _Watch | None = None
        test.addCleanup(self.stop)

    @property
    def url(self) -> str:
        if self.unix:
            return f"unix://{self.socket}?db=0"
        if self.tls:
            return f"rediss://localhost:{self.port}/0?ssl_ca_certs={self.tls[0]}"
        return f"redis://127.0.0.1:{self.port}/0"

    def _listen_args(self) -> list[str]:
        if self.unix:
            return ["--port", "0", "--unixsocket", self.socket]
        if self.tls:
            cert, key = self.tls
            return ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", cert,
                    "--tls-key-file", key, "--tls-ca-cert-file", cert, "--tls-auth-clients", "no"]
        return ["--port", str(self.port)]

    async def start(self) -> None:
        watch = self._watch = _Watch()
        argv = [
            self.binary, *self._listen_args(), "--dir", self.dir, "--save", "",
            "--appendonly", "no", "--bind", "127.0.0.1", "--logfile", "",
        ]
        if self.password is not None:
            argv += ["--requirepass", self.password]
        argv += self.config
        reactor.spawnProcess(watch, self.binary, argv, env=dict(os.environ), path=self.dir)
        await watch.ready.addTimeout(START_TIMEOUT, reactor)

    async def stop(self) -> None:
        watch, self._watch = self._watch, None
        if watch is None or watch.ended.called:
            return
        watch.transport.signalProcess("KILL")
        await watch.ended
