"""
End to end over real sockets and TLS: the daemon as a process, a real
irssi (at a pseudo-terminal, pinned to the daemon's fingerprint) and real
C{ocm-client} processes in one room, both ways, and irssi's host kicking
one; and, in process, Twisted's
own IRC client (twisted.words' IRCClient, an implementation independent of
the server's) beside a UDP member speaking the wire protocol and a browser's
WebSocket.
"""

from __future__ import annotations

import os
import pty
import re
import shutil
import socket
import subprocess
import threading
from pathlib import Path

from twisted.internet import defer, endpoints, reactor, ssl
from twisted.internet.protocol import Factory
from twisted.trial import unittest
from twisted.words.protocols import irc as twisted_irc

from ocm.bench.spawn import free_port
from ocm.server import tls
from tests import wire
from tests.daemon import DaemonMixin
from tests.processes import LIMIT, ProcessTestCase



class IRCProcessTestCase(ProcessTestCase):
    timeout = 120
    program = ""

    def setUp(self) -> None:
        super().setUp()
        if shutil.which(self.program) is None:
            if os.environ.get("CI"):
                self.fail(f"{self.program} is not installed (.ci/run installs Debian's)")
            raise unittest.SkipTest(f"{self.program} is not installed")

    def daemon(self) -> None:
        self.irc = free_port(socket.SOCK_STREAM, "127.0.0.1")
        self.web = free_port(socket.SOCK_STREAM, "127.0.0.1")
        self.twistd("--irc", f"tcp:{self.irc}:interface=127.0.0.1",
                    "--web", f"tcp:{self.web}:interface=127.0.0.1", "--web-no-tls",
                    ready="TLS fingerprint SHA256:")

    def client(self, name: str, *args: str):
        return self.spawn(name, ["-m", "ocm.client", "127.0.0.1", "--port", str(self.tcp), "--name", name, *args])


    def room_with_backlog(self, line: str):
        """alice (ocm-client) makes "study group" and stays; bob leaves C{line} in its history."""
        alice = self.client("alice", "--room", "study group", "--create", "--accept-new-cert")
        self.wait_for(lambda: "Created room" in self.read("alice.err") or alice.poll() is not None,
                      lambda: "alice to create the room: " + self.read("alice.err"))
        bob = self.client("bob", "--room", "study group", "--accept-new-cert")
        bob.stdin.write(f"{line}\n".encode())
        bob.stdin.close()
        self.assertEqual(bob.wait(LIMIT), 0, self.read("bob.err"))
        return alice


class WeeChatTests(IRCProcessTestCase):
    """weechat-headless, pinned to the daemon's certificate: it joins, reads, is kicked (it types nothing)."""

    program = "weechat-headless"

    def test_weechat_joins_over_tls_and_reads(self):
        self.daemon()
        alice = self.room_with_backlog("before weechat came")
        home = self.dir / "wee"
        home.mkdir()
        (home / "logger.conf").write_text(
            '[look]\nbacklog = 0\n[file]\nauto_log = on\nflush_delay = 0\n'
            'mask = "$plugin.$name.weechatlog"\n'
        )
        pin = tls.pem_fingerprint((self.dir / "data" / "server.pem").read_bytes()).replace(":", "").lower()
        command = (
            f"/server add ocm 127.0.0.1/{self.irc} -ssl -ssl_fingerprint={pin} "
            "-nicks=wee -username=wee -realname=wee -autojoin=#study_group; /connect ocm"
        )
        wee = subprocess.Popen(
            ["weechat-headless", "--dir", str(home), "--run-command", command], cwd=self.dir, env=self.env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(self.dir / "wee.err", "wb"),
        )
        self.addCleanup(lambda: wee.poll() is None and (wee.kill(), wee.wait(LIMIT)))
        log = home / "logs" / "irc.ocm.#study_group.weechatlog"
        channel = lambda: log.read_text("utf-8", "replace") if log.exists() else ""
        self.wait_for(lambda: "before weechat came" in channel(),
                      lambda: "the backlog in WeeChat: " + channel() + self.read("wee/logs/irc.server.ocm.weechatlog"))
        self.assertRegex(channel(), r"\tbob\tbefore weechat came")
        self.assertIn("hosted by alice", channel())
        self.wait_for(lambda: "* wee joined" in self.read("alice.out"), lambda: "alice to see wee: " + self.read("alice.out"))
        alice.stdin.write("hi weechat, ça va?\n".encode())
        alice.stdin.flush()
        self.wait_for(lambda: re.search(r"\t@alice\thi weechat, ça va\?", channel()), lambda: "wee to hear alice: " + channel())
        alice.stdin.close()
        self.assertEqual(alice.wait(LIMIT), 0, self.read("alice.err"))
        self.wait_for(lambda: "the host left" in channel(), lambda: "the kick: " + channel())
        self.assertRegex(channel(), r"wee.*kicked|kicked.*wee")
        self.assertNotIn("Traceback", self.read("daemon.log"))


class IrssiTests(IRCProcessTestCase):
    """irssi, at a pseudo-terminal as a person runs it, pinned to the daemon's certificate."""

    program = "irssi"

    def irssi(self, nick: str, channel: str):
        """
        irssi in a pty (its screen drained to irssi.screen), set up as a
        person would: a network, its server over TLS pinned to the daemon's
        certificate, connected and C{channel} joined at start. Returns a
        function that types a line.
        """
        home = self.dir / "irssi"
        home.mkdir()
        fingerprint = tls.pem_fingerprint((self.dir / "data" / "server.pem").read_bytes())
        (home / "config").write_text(
            'chatnets = { ocm = { type = "IRC"; }; };\n'
            f'servers = ( {{ address = "127.0.0.1"; chatnet = "ocm"; port = "{self.irc}"; use_tls = "yes"; '
            f'tls_verify = "no"; tls_pinned_cert = "{fingerprint}"; autoconnect = "yes"; }} );\n'
            f'channels = ( {{ name = "{channel}"; chatnet = "ocm"; autojoin = "yes"; }} );\n'
            'settings = {\n'
            f'  core = {{ real_name = "{nick}"; user_name = "{nick}"; nick = "{nick}"; }};\n'
            f'  "fe-common/core" = {{ autolog = "yes"; autolog_path = "{home}/logs/$tag/$0.log"; '
            'autolog_level = "ALL"; log_timestamp = "%H:%M:%S "; };\n'
            '};\n'
        )
        master, slave = pty.openpty()
        env = dict(self.env, TERM="xterm", HOME=str(home))
        proc = subprocess.Popen(
            ["irssi", "--home", str(home), "-n", nick], stdin=slave, stdout=slave, stderr=slave,
            env=env, cwd=self.dir, close_fds=True,
        )
        os.close(slave)
        screen = open(self.dir / "irssi.screen", "wb")

        def drain() -> None:
            while True:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    break
                if not data:
                    break
                screen.write(data)
                screen.flush()

        threading.Thread(target=drain, daemon=True).start()

        def cleanup() -> None:
            if proc.poll() is None:
                proc.kill()
                proc.wait(LIMIT)
            os.close(master)
            screen.close()

        self.addCleanup(cleanup)
        self.wait_for(lambda: (self.dir / "irssi.screen").stat().st_size > 0 or proc.poll() is not None,
                      "irssi to start")

        def type_line(text: str) -> None:
            os.write(master, text.encode("utf-8") + b"\r")

        return proc, type_line, home / "logs" / "ocm"

    def test_irssi_ocm_clients_and_a_browser_in_one_room_over_tls(self):
        self.daemon()
        alice = self.room_with_backlog("before irssi came")

        irssi, type_line, logs = self.irssi("irs", "#study_group")
        channel = lambda: (logs / "#study_group.log").read_text("utf-8", "replace") if (logs / "#study_group.log").exists() else ""
        # The backlog (irssi takes server-time, so the time is a tag, not text), then the join as alice sees it.
        self.wait_for(lambda: "before irssi came" in channel(), lambda: "the backlog in irssi: " + channel())
        self.assertIn("< bob> before irssi came", channel())
        self.assertIn("[@alice] [ irs]", channel())
        self.wait_for(lambda: "* irs joined" in self.read("alice.out"), lambda: "alice to see irs: " + self.read("alice.out"))

        # A browser member joins too: it hears the room, and irssi hears it.
        self.env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent) + os.pathsep + self.env["PYTHONPATH"]
        self.spawn("wanda", ["-m", "tests.browser_member", str(self.web), "study group", "wanda",
                             "hello from a browser"])
        self.wait_for(lambda: "joined 200" in self.read("wanda.out"), lambda: "the browser: " + self.read("wanda.err"))
        self.wait_for(lambda: "wanda> hello from a browser" in channel(), lambda: "irs to hear wanda: " + channel())

        # irssi -> ocm-client and the browser.
        type_line("/msg #study_group hello from irssi, ça va?")
        self.wait_for(lambda: "irs: hello from irssi, ça va?" in self.read("alice.out"),
                      lambda: "alice to hear irs: " + self.read("alice.out"))
        self.wait_for(lambda: "irs: hello from irssi, ça va?" in self.read("wanda.out"),
                      lambda: "wanda to hear irs: " + self.read("wanda.out"))
        # ocm-client -> irssi, a long line split for IRC.
        long_line = "long " + "x" * 900 + " end"
        alice.stdin.write(f"hi irssi\n{long_line}\n".encode())
        alice.stdin.flush()
        self.wait_for(lambda: re.search(r"alice> hi irssi", channel()), lambda: "irs to hear alice: " + channel())
        self.wait_for(lambda: re.search(r"x+ end", channel()), lambda: "the long line's end: " + channel())
        pieces = [line.split("alice> ", 1)[1] for line in channel().splitlines() if "alice> " in line]
        self.assertEqual("".join(pieces[1:]), long_line)

        # The host leaves: the room closes, irssi is kicked from it by the server.
        alice.stdin.close()
        self.assertEqual(alice.wait(LIMIT), 0, self.read("alice.err"))
        self.wait_for(lambda: "was kicked from #study_group" in channel(), lambda: "the kick: " + channel())
        self.assertIn("the host left", channel())
        # irssi hosts a room of its own, and kicks an ocm-client member from it.
        type_line("/join #irssi_room")
        own = lambda: (logs / "#irssi_room.log").read_text("utf-8", "replace") if (logs / "#irssi_room.log").exists() else ""
        self.wait_for(lambda: "#irssi_room" in own(), lambda: "irssi's own room: " + own())
        carl = self.client("carl", "--room", "irssi room", "--accept-new-cert")
        self.wait_for(lambda: "carl" in own() and "has joined" in own(), lambda: "carl in irssi's room: " + own())
        type_line("/kick #irssi_room carl that will do")
        self.wait_for(lambda: carl.poll() is not None, lambda: "carl to be kicked: " + self.read("carl.out") + self.read("carl.err"))
        self.assertIn("carl was kicked from #irssi_room by irs [that will do]", own())
        self.assertIn("that will do", self.read("carl.out") + self.read("carl.err"))  # a 1.1 client's view: its room closed
        type_line("/quit")
        self.wait_for(lambda: irssi.poll() is not None, "irssi to quit")
        self.assertNotIn("Traceback", self.read("daemon.log"))


class IRCClient(twisted_irc.IRCClient):
    """Twisted's IRC client, keeping what it is told."""

    nickname = "tw"
    heartbeatInterval = None  # the server PINGs; the client only answers

    def connectionMade(self) -> None:
        self.heard: list[tuple[str, str, str]] = []
        self.kicks: list[tuple[str, str]] = []
        self.joined_d: defer.Deferred = defer.Deferred()
        self.signed_on: defer.Deferred = defer.Deferred()
        self.waiters: list[tuple[object, defer.Deferred]] = []
        self.lost: defer.Deferred = defer.Deferred()
        super().connectionMade()

    def connectionLost(self, reason) -> None:
        super().connectionLost(reason)
        self.lost.callback(None)

    def signedOn(self) -> None:
        self.signed_on.callback(None)

    def joined(self, channel: str) -> None:
        if not self.joined_d.called:
            self.joined_d.callback(channel)

    def privmsg(self, user: str, channel: str, message: str) -> None:
        self.heard.append((user.split("!")[0], channel, message))
        self._check()

    def kickedFrom(self, channel: str, kicker: str, message: str) -> None:
        self.kicks.append((channel, message))
        self._check()

    def until(self, check) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.waiters.append((check, d))
        self._check()
        return d

    def _check(self) -> None:
        for check, d in list(self.waiters):
            if check():
                self.waiters.remove((check, d))
                d.callback(None)


class TwistedClientTests(DaemonMixin, unittest.TestCase):
    timeout = 60

    async def connect(self, port: int) -> IRCClient:
        authority = ssl.Certificate.loadPEM((self.data_dir / "server.pem").read_bytes())
        options = ssl.optionsForClientTLS("localhost", trustRoot=authority)
        endpoint = endpoints.wrapClientTLS(options, endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port))
        client = await endpoint.connect(Factory.forProtocol(IRCClient))
        def close() -> defer.Deferred:
            client.transport.loseConnection()
            return client.lost

        self.addCleanup(close)
        await client.signed_on
        return client

    async def test_irc_udp_and_browser_members_in_one_room(self):
        """Twisted's IRCClient, a wire-level UDP member and a browser's WebSocket, all ways round."""
        from tests.websocket import open_browser

        self.start_daemon("--web", "tcp:0:interface=127.0.0.1", "--web-no-tls",
                          "--irc", "tcp:0:interface=127.0.0.1")
        port = self.svc.irc_listener.port.getHost().port
        host = await self.enter("lab notes", "prof", create=True)
        host.chat("an old message")
        self.assertEvent(await host.event(), wire.MESSAGE, "prof", "an old message", seq=1)
        browser = await open_browser(self.svc.web_port.getHost().port)
        self.addCleanup(lambda: browser.transport and browser.transport.abortConnection())
        response, _ = await browser.ask({"op": "join", "room": "lab notes", "username": "Web User"})
        self.assertEqual(response["status"], 200, response)
        self.assertEqual((await host.event()).name, "Web User")

        client = await self.connect(port)
        client.join("#lab_notes")
        await client.joined_d
        # The backlog; without server-time its time is in the text.
        await client.until(lambda: client.heard)
        self.assertEqual(client.heard[0][:2], ("prof", "#lab_notes"))
        self.assertRegex(client.heard[0][2], r"^\[\d\d:\d\d:\d\d\] an old message$")
        joined = await host.event()
        self.assertEqual((joined.kind, joined.name), (wire.JOINED, "tw"))
        frame = await browser.next_event()
        self.assertEqual((frame["kind"], frame["name"]), ("joined", "tw"))

        client.say("#lab_notes", "hello over irc")
        said = await host.event()
        self.assertEqual((said.kind, said.name, said.text), (wire.MESSAGE, "tw", "hello over irc"))
        frame = await browser.next_event()
        self.assertEqual((frame["kind"], frame["name"], frame["text"]), ("message", "tw", "hello over irc"))

        host.chat("hello over udp")
        await client.until(lambda: ("prof", "#lab_notes", "hello over udp") in client.heard)
        browser.send({"op": "send", "id": 1, "text": "hello from a browser"})
        await client.until(lambda: ("Web%20User", "#lab_notes", "hello from a browser") in client.heard)

        host.leave()
        await client.until(lambda: client.kicks)
        self.assertEqual(client.kicks[0][0], "#lab_notes")
        self.assertIn("the host left", client.kicks[0][1])
