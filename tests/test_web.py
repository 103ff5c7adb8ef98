"""
Browser members over the WebSocket binding, against the daemon as the
twistd plugin builds it (C{--web}), side by side with UDP members speaking
the protocol through the independent client in L{tests.wire}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web.client import Agent, readBody

from ocm.wire.datagram import send
from tests import wire
from tests.daemon import DaemonMixin
from tests.websocket import Browser, open_browser

PLAIN = ("--web", "tcp:0:interface=127.0.0.1", "--web-no-tls")


class Mute(Browser):
    """A browser whose network stopped: it answers no ping."""

    answer_pings = False


class WebTestCase(DaemonMixin, unittest.TestCase):
    timeout = 60

    def start(self, *args: str) -> None:
        self.start_daemon(*PLAIN, *args)

    @property
    def web(self) -> int:
        return self.svc.web_port.getHost().port

    async def browser(self, **kw: Any) -> Browser:
        b = await open_browser(self.web, **kw)
        self.addCleanup(lambda: b.transport and b.transport.abortConnection())
        return b

    async def member(self, op: str, room: str, username: str, password: str | None = None, **kw: Any) -> tuple[Browser, dict]:
        b = await self.browser(**kw)
        frame = {"op": op, "room": room, "username": username}
        if password is not None:
            frame["password"] = password
        response, complete = await b.ask(frame)
        self.assertEqual(response["status"], 200, response)
        return b, complete


class PageTests(WebTestCase):
    async def get(self, path: str) -> tuple[int, Any, bytes]:
        response = await Agent(reactor).request(b"GET", f"http://127.0.0.1:{self.web}{path}".encode())
        return response.code, response.headers, await readBody(response)

    async def test_page_and_its_files_under_a_strict_policy(self):
        self.start()
        code, headers, body = await self.get("/")
        self.assertEqual(code, 200)
        self.assertIn(b'<script type="module" src="app.js"></script>', body)
        self.assertNotIn(b"<script>", body)  # nothing inline
        csp = headers.getRawHeaders(b"content-security-policy")[0].decode()
        for rule in ("default-src 'none'", "script-src 'self'", "connect-src 'self'",
                     "frame-ancestors 'none'", "require-trusted-types-for 'script'"):
            self.assertIn(rule, csp)
        self.assertNotIn("unsafe", csp)
        self.assertEqual(headers.getRawHeaders(b"x-content-type-options"), [b"nosniff"])
        for path, kind in (("/app.js", b"text/javascript"), ("/style.css", b"text/css"),
                           ("/connection.js", b"text/javascript"), ("/sentences.js", b"text/javascript")):
            code, headers, body = await self.get(path)
            self.assertEqual(code, 200, path)
            self.assertTrue(headers.getRawHeaders(b"content-type")[0].startswith(kind), path)
            self.assertTrue(headers.getRawHeaders(b"content-security-policy"), path)

    async def test_no_other_path(self):
        self.start()
        for path in ("/nothing", "/app.js/x", "/static/app.js", "/../setup.cfg", "/ws/x"):
            code, headers, _ = await self.get(path)
            self.assertEqual(code, 404, path)
            self.assertTrue(headers.getRawHeaders(b"content-security-policy"), path)

    async def test_tls_by_default_with_the_daemons_certificate(self):
        self.start_daemon("--web", "tcp:0:interface=127.0.0.1")
        b = await open_browser(self.web, tls=True)
        self.addCleanup(b.transport.abortConnection)
        response, complete = await b.ask({"op": "list"})
        self.assertEqual((response["status"], complete["rooms"]), (200, []))
        peer = b.transport.getPeerCertificate()
        self.assertEqual(
            peer.digest("sha256").replace(b":", b"").lower(),
            self.pin.hex().encode(),
        )


class OriginTests(WebTestCase):
    async def test_same_origin_only(self):
        self.start()
        for origin in (None, "https://evil.example", f"http://127.0.0.2:{self.web}", "null"):
            with self.assertRaises(ConnectionError, msg=origin):
                await open_browser(self.web, origin=origin)
        await self.browser()  # the page's own origin
        await self.browser(origin=f"https://127.0.0.1:{self.web}")  # behind a TLS proxy

    async def test_web_origin_allows_more(self):
        self.start("--web-origin", "https://Chat.Example.org, http://other.example:8080")
        await self.browser(origin="https://chat.example.org")
        await self.browser(origin="http://other.example:8080")
        with self.assertRaises(ConnectionError):
            await open_browser(self.web, origin="http://other.example")

    async def test_sockets_per_address_are_capped(self):
        self.start("--web-max-per-address", "2")
        first = await self.browser()
        await self.browser()
        with self.assertRaises(ConnectionError):
            await open_browser(self.web)
        first.sendClose()
        await first.wait_closed()
        await self.browser()  # the slot was given back


class ChatTests(WebTestCase):
    async def test_browser_and_udp_member_see_each_other(self):
        self.start()
        alice, complete = await self.member("create", "Lobby", "alice")
        self.assertEqual(complete["op"], "create")
        self.assertEqual((complete["room"], complete["host"], complete["members"]), ("Lobby", True, ["alice"]))
        self.assertEqual((complete["version"], complete["seq"]), ("1.1", 0))
        self.assertNotIn("token", complete)
        self.assertNotIn("key", complete)

        bob = await self.enter("lobby", "bob")
        joined = await alice.next_event()
        self.assertEqual((joined["kind"], joined["name"]), ("joined", "bob"))

        bob.chat("hi alice")
        said = await alice.next_event()
        self.assertEqual((said["kind"], said["seq"], said["name"], said["text"]), ("message", 1, "bob", "hi alice"))
        self.assertEvent(await bob.event(), wire.MESSAGE, "bob", "hi alice", seq=1)

        alice.send({"op": "send", "id": 1, "text": "hi bob"})
        echo = await alice.next_event()
        self.assertEqual((echo["kind"], echo["seq"], echo["id"], echo["name"]), ("echo", 2, 1, "alice"))
        self.assertEvent(await bob.event(), wire.MESSAGE, "alice", "hi bob", seq=2)

        # A resend of msg 1 is echoed again, and relayed to no one.
        alice.send({"op": "send", "id": 1, "text": "hi bob"})
        again = await alice.next_event()
        self.assertEqual((again["kind"], again["seq"], again["id"]), ("echo", 2, 1))
        bob.chat("next")
        self.assertEvent(await bob.event(), wire.MESSAGE, "bob", "next", seq=3)
        self.assertEqual((await alice.next_event())["seq"], 3)
        alice.assertQuiet()

    async def test_history_on_join(self):
        self.start()
        alice, _ = await self.member("create", "Lobby", "alice")
        for i in (1, 2, 3):
            alice.send({"op": "send", "id": i, "text": f"line {i}"})
            self.assertEqual((await alice.next_event())["kind"], "echo")
        carol, complete = await self.member("join", "lobby", "carol")
        self.assertEqual((complete["seq"], complete["members"]), (3, ["alice", "carol"]))
        self.assertGreater(complete["history"], 0)
        carol.send({"op": "history", "first": 2, "last": 3})
        events = [await carol.next_event(), await carol.next_event()]
        self.assertEqual(
            [(e["kind"], e["seq"], e["name"], e["text"]) for e in events],
            [("history", 2, "alice", "line 2"), ("history", 3, "alice", "line 3")],
        )
        self.assertEqual((await alice.next_event())["kind"], "joined")

    async def test_hostile_text_is_carried_as_text(self):
        self.start()
        alice, _ = await self.member("create", "Lobby", "alice")
        bob = await self.enter("Lobby", "bob")
        await alice.next_event()
        hostile = '<img src=x onerror=alert(1)>"\u2028</script>'
        bob.chat(hostile)
        self.assertEqual((await alice.next_event())["text"], hostile)

    async def test_closing_the_socket_leaves(self):
        self.start()
        host = await self.enter("Lobby", "host", create=True)
        self.keep_alive(host)
        b, _ = await self.member("join", "Lobby", "bea")
        self.assertEvent(await host.event(), wire.JOINED, "bea")
        b.transport.abortConnection()  # a closed tab, a lost network
        self.assertEvent(await host.event(), wire.LEFT, "bea")

    async def test_leave_frame(self):
        self.start()
        host = await self.enter("Lobby", "host", create=True)
        self.keep_alive(host)
        b, _ = await self.member("join", "Lobby", "bea")
        self.assertEvent(await host.event(), wire.JOINED, "bea")
        b.send({"op": "leave"})
        self.assertEvent(await host.event(), wire.LEFT, "bea")
        self.assertEqual((await b.wait_closed())[0], 1000)

    async def test_host_leaving_closes_the_room(self):
        self.start()
        b, _ = await self.member("create", "Lobby", "bea")
        guest = await self.enter("Lobby", "guest")
        await b.next_event()
        b.send({"op": "leave"})
        self.assertEvent(await guest.event(), wire.CLOSED, "bea", "the host left")
        self.assertEqual((await b.wait_closed())[0], 1000)
        b.assertQuiet()

    async def test_host_browser_gone_closes_the_room(self):
        self.start()
        b, _ = await self.member("create", "Lobby", "bea")
        guest = await self.enter("Lobby", "guest")
        await b.next_event()
        b.transport.abortConnection()
        self.assertEvent(await guest.event(), wire.CLOSED, "bea", "the host left")

    async def test_room_closed_reaches_the_browser(self):
        self.start()
        host = await self.enter("Lobby", "host", create=True)
        b, _ = await self.member("join", "Lobby", "bea")
        host.leave()
        closed = await b.next_event()
        self.assertEqual((closed["kind"], closed["name"], closed["text"]), ("closed", "host", "the host left"))
        self.assertEqual(await b.wait_closed(), (4000, "the host left"))

    async def test_shutdown_closes_rooms_for_browsers(self):
        self.start()
        b, _ = await self.member("create", "Lobby", "bea")
        await self.svc.stopService()
        closed = await b.next_event()
        self.assertEqual((closed["kind"], closed["text"]), ("closed", "the server is shutting down"))


class LivenessTests(WebTestCase):
    async def test_pongs_keep_a_quiet_browser_in(self):
        self.start("--timeout", "1")
        host = await self.enter("Lobby", "host", create=True)
        self.keep_alive(host)
        b, _ = await self.member("join", "Lobby", "bea")
        self.assertEvent(await host.event(), wire.JOINED, "bea")
        await wire.sleep(reactor, 2.5)  # over twice the timeout, no frame sent
        host.chat("still there?")
        self.assertEvent(await host.event(), wire.MESSAGE, "host", "still there?", seq=1)
        self.assertEqual((await b.next_event())["text"], "still there?")

    async def test_the_http_idle_timeout_does_not_cut_a_websocket(self):
        # The Site closes idle HTTP connections after max(request timeout,
        # room timeout): 0.5 s here; the WebSocket outlives it by far.
        self.start("--timeout", "0.5", "--request-timeout", "0.1")
        b, _ = await self.member("create", "Lobby", "bea")
        await wire.sleep(reactor, 2.0)
        b.send({"op": "send", "id": 1, "text": "still here"})
        self.assertEqual((await b.next_event())["kind"], "echo")
        self.assertIsNone(b.close_info)

    async def test_a_browser_that_stops_answering_times_out(self):
        self.start("--timeout", "1")
        host = await self.enter("Lobby", "host", create=True)
        self.keep_alive(host)
        b, _ = await self.member("join", "Lobby", "bea", cls=Mute)
        self.assertEvent(await host.event(), wire.JOINED, "bea")
        self.assertEvent(await host.event(timeout=5), wire.TIMED_OUT, "bea")
        # Its next frame is told it is out, not silently dropped.
        b.send({"op": "send", "id": 1, "text": "am I still here?"})
        self.assertEqual(await b.wait_closed(), (4001, "you were silent too long and left the room"))

    async def test_a_dead_connection_is_dropped(self):
        self.start("--timeout", "1")
        b, _ = await self.member("create", "Lobby", "bea", cls=Mute)
        await b.wait_closed(timeout=8)  # timed out, then the socket let go
        self.assertEqual(self.svc.rooms.rooms, {})


class RefusalTests(WebTestCase):
    async def test_statuses_as_tcrp(self):
        self.start("--max-members", "2")
        b = await self.browser()
        response, _ = await b.ask({"op": "join", "room": "nowhere", "username": "x"})
        self.assertEqual((response["status"], response["op"], response["room"]), (404, "join", "nowhere"))
        await self.member("create", "Lobby", "alice")
        response, _ = await b.ask({"op": "create", "room": "LOBBY", "username": "x"})
        self.assertEqual(response["status"], 409)
        response, _ = await b.ask({"op": "join", "room": "Lobby", "username": "ALICE"})
        self.assertEqual(response["status"], 409)
        await self.enter("Lobby", "bob")
        response, _ = await b.ask({"op": "join", "room": "Lobby", "username": "carol"})
        self.assertEqual(response["status"], 503)
        # Refusals keep the socket: the same page may try again.
        response, complete = await b.ask({"op": "list"})
        self.assertEqual(complete["rooms"], [{"name": "Lobby", "members": 2, "password": False}])

    async def test_passwords_and_their_limit(self):
        self.start("--password-burst", "2")
        await self.member("create", "Locked", "alice", "s3cret")
        b = await self.browser()
        response, _ = await b.ask({"op": "join", "room": "Locked", "username": "bob"})
        self.assertEqual(response["status"], 401)  # no password: not a guess
        for guess in ("guess", "again"):
            response, _ = await b.ask({"op": "join", "room": "Locked", "username": "bob", "password": guess})
            self.assertEqual(response["status"], 401)
        response, _ = await b.ask({"op": "join", "room": "Locked", "username": "bob", "password": "s3cret"})
        self.assertEqual(response["status"], 429)
        self.assertIn("password", response["message"])
        self.assertGreaterEqual(response["retry_after"], 1)
        # TCRP from the same address shares the budget.
        status, _ = await self.ask(wire.JOIN_ROOM, "Locked", {"username": "bob", "password": "s3cret"})
        self.assertEqual(status, 429)

    async def test_right_password_joins(self):
        self.start()
        await self.member("create", "Locked", "alice", "s3cret")
        b, complete = await self.member("join", "Locked", "bob", "s3cret")
        self.assertEqual(complete["members"], ["alice", "bob"])

    async def test_request_rate_with_retry_after(self):
        self.start("--request-rate", "0.1", "--request-burst", "2")
        self.assertEqual(self.svc.tcrp.limited["request_rate"], 0)
        b = await self.browser()
        for _ in range(2):
            self.assertEqual((await b.ask({"op": "list"}))[0]["status"], 200)
        response, _ = await b.ask({"op": "list"})
        self.assertEqual(response["status"], 429)
        self.assertGreaterEqual(response["retry_after"], 1)
        self.assertEqual(self.svc.tcrp.limited["request_rate"], 1)

    async def test_malformed_frames_close_with_a_reason(self):
        self.start()
        for frame in ("not json", "[1]", {"op": "dance"}, {"op": "send", "id": 1, "text": "early"},
                      {"op": "join", "room": " padded", "username": "x"}, b"\x00binary"):
            b = await self.browser()
            b.send(frame)
            error = await b.next()
            self.assertEqual((error["type"], error["status"]), ("error", 400), frame)
            self.assertTrue(error["message"], frame)
            self.assertEqual((await b.wait_closed())[0], 4400, frame)

    async def test_too_long_a_line_is_refused_and_the_member_stays(self):
        self.start()
        b, _ = await self.member("create", "Lobby", "alice")
        b.send({"op": "send", "id": 1, "text": "x" * 3073})
        error = await b.next()
        self.assertEqual((error["type"], error["status"]), ("error", 413))
        b.send({"op": "send", "id": 1, "text": "x" * 3072})
        echo = await b.next_event()
        self.assertEqual((echo["kind"], echo["seq"]), ("echo", 1))

    async def test_a_frame_over_max_payload_closes(self):
        self.start("--max-payload", "1024")
        b = await self.browser()
        b.send({"op": "list", "pad": "x" * 2000})
        self.assertEqual((await b.wait_closed())[0], 1009)

    async def test_sends_are_rate_limited_as_datagrams(self):
        self.start("--member-rate", "0.01", "--member-burst", "3")
        b, _ = await self.member("create", "Lobby", "alice")
        for i in range(1, 6):
            b.send({"op": "send", "id": i, "text": f"{i}"})
        echoes = [await b.next_event() for _ in range(3)]
        self.assertEqual([e["id"] for e in echoes], [1, 2, 3])
        b.send({"op": "list"})  # a request still answers: the sends were dropped
        self.assertEqual((await b.next())["type"], "response")
        self.assertEqual(self.svc.rooms.drops["flood"], 2)


class HardeningTests(WebTestCase):
    """Issue 20's findings on the WebSocket, each reproduced against the daemon."""

    async def test_a_browser_that_never_reads_is_removed_at_its_queue_bound(self):
        self.start("--member-rate", "0", "--web-send-queue", "65536", "--timeout", "30")
        host = await self.enter("Lobby", "host", create=True)
        reader, _ = await self.member("join", "Lobby", "bea")
        self.assertEvent(await host.event(), wire.JOINED, "bea")
        reader.transport.pauseProducing()  # the tab stops reading
        # Control characters escape to six bytes each in JSON: ~18 KB a line.
        line = "\x01" * 3000
        for burst in range(100):
            for _ in range(50):
                host.chat(line)
            await wire.sleep(reactor, 0.02)
            if self.svc.web_chat.refusals["slow_reader"]:
                break
        self.assertEqual(self.svc.web_chat.refusals["slow_reader"], 1)
        kinds = []
        while True:
            event = await host.event()
            if event.kind == wire.TIMED_OUT:
                break
            kinds.append(event.kind)
        self.assertEqual((event.name, set(kinds) <= {wire.MESSAGE}), ("bea", True))
        self.assertEqual(len(self.svc.rooms.rooms["lobby"].members), 1)
        self.assertEqual(self.svc.web_chat.active, 0)

    async def test_sending_does_not_stand_in_for_answering_pings(self):
        # A browser that sends (within the rate) but answers no ping: its
        # own frames no longer hold the ping timeout off.
        self.start("--timeout", "1")
        b, _ = await self.member("create", "Lobby", "bea", cls=Mute)
        for i in range(1, 40):
            if b.close_info is not None:
                break
            b.send({"op": "send", "id": i, "text": "still typing"})
            await wire.sleep(reactor, 0.25)
        self.assertIsNotNone(b.close_info, "a browser that never answers a ping kept its socket")
        self.assertEqual(self.svc.rooms.rooms, {})

    async def test_refused_frames_are_charged_to_the_request_rate(self):
        self.start("--request-rate", "0.01", "--request-burst", "5")
        b, _ = await self.member("create", "Lobby", "alice")  # one request
        statuses = []
        for i in range(10):
            b.send({"op": "send", "id": 1, "text": "x" * 3073})
        for _ in range(4):
            statuses.append((await b.next())["status"])
        self.assertEqual(statuses, [413] * 4)
        self.assertEqual((await b.wait_closed())[0], 4429)

    async def test_no_version_banner_on_the_upgrade(self):
        self.start()
        b = await self.browser()
        self.assertIn("upgrade", b.http_headers)  # the 101's headers, as the browser got them
        self.assertNotIn("server", b.http_headers)


class ModerationTests(WebTestCase):
    """Protocol 1.2 over the binding: command frames, the moderation events, both views."""

    async def member12(self, op: str, room: str, username: str, **kw: Any) -> tuple[Browser, dict]:
        b = await self.browser()
        response, complete = await b.ask({"op": op, "room": room, "username": username, "version": "1.2", **kw})
        self.assertEqual(response["status"], 200, response)
        return b, complete

    async def events(self, b: Browser, n: int) -> list[tuple]:
        out = []
        for _ in range(n):
            e = await b.next_event()
            out.append((e["kind"], e["seq"], e.get("name"), e.get("text"), e.get("id")))
        return out

    async def test_a_host_kicks_and_every_view_hears_it(self):
        self.start()
        ann, complete = await self.member12("create", "Class", "ann")
        self.assertEqual((complete["version"], complete["host_name"], complete["muted"]), ("1.2", "ann", []))
        bob, complete = await self.member12("join", "Class", "bob")
        self.assertEqual((complete["seq"], complete["host_name"], complete["members"]), (1, "ann", ["ann", "bob"]))
        old, complete = await self.member("join", "Class", "old")  # a page that did not ask for 1.2
        self.assertEqual(complete["version"], "1.1")
        self.assertNotIn("host_name", complete)
        self.assertEqual(await self.events(ann, 2), [("joined", 1, "bob", "", None), ("joined", 2, "old", "", None)])
        self.assertEqual(await self.events(bob, 1), [("joined", 2, "old", "", None)])

        ann.send({"op": "command", "id": 1, "command": "kick", "name": "bob", "reason": "spam"})
        self.assertEqual(await self.events(ann, 2), [("kicked", 3, "bob", "spam", None), ("echo", 3, "ann", None, 1)])
        self.assertEqual(await self.events(bob, 1), [("kicked", 3, "bob", "spam", None)])
        self.assertEqual(await bob.wait_closed(), (4003, "spam"))
        # The 1.1 view: someone left, numbered among messages only.
        self.assertEqual(await self.events(old, 1), [("left", 0, "bob", "", None)])
        # Retransmitted, the command is answered again and acts once.
        ann.send({"op": "command", "id": 1, "command": "kick", "name": "bob", "reason": "spam"})
        self.assertEqual(await self.events(ann, 1), [("echo", 3, "ann", None, 1)])
        # A kicked member may come back.
        bob, complete = await self.member12("join", "Class", "bob")
        self.assertEqual(complete["seq"], 4)
        ann.assertQuiet()
        old.assertQuiet()

    async def test_a_ban_keeps_the_name_and_the_address_out_until_unbanned(self):
        self.start()
        ann, _ = await self.member12("create", "Class", "ann")
        eve, _ = await self.member12("join", "Class", "eve")
        await ann.next_event()
        ann.send({"op": "command", "id": 1, "command": "ban", "name": "eve", "reason": "rude"})
        self.assertEqual((await eve.next_event())["kind"], "banned")
        self.assertEqual(await eve.wait_closed(), (4003, "rude"))
        self.assertEqual(await self.events(ann, 2), [("banned", 2, "eve", "rude", None), ("echo", 2, "ann", None, 1)])
        for name in ("eve", "eve2"):  # the same address under another name too
            b = await self.browser()
            response, _ = await b.ask({"op": "join", "room": "Class", "username": name, "version": "1.2"})
            self.assertEqual(response["status"], 403, response)
        ann.send({"op": "command", "id": 2, "command": "unban", "name": "eve"})
        self.assertEqual(await self.events(ann, 2), [("unbanned", 3, "eve", "", None), ("echo", 3, "ann", None, 2)])
        await self.member12("join", "Class", "eve")

    async def test_mute_refuses_sends_and_a_handed_over_room_outlives_its_first_host(self):
        self.start()
        ann, _ = await self.member12("create", "Class", "ann")
        bob, _ = await self.member12("join", "Class", "bob")
        await ann.next_event()
        ann.send({"op": "command", "id": 1, "command": "mute", "name": "bob"})
        self.assertEqual(await self.events(bob, 1), [("muted", 2, "bob", "", None)])
        bob.send({"op": "send", "id": 1, "text": "la la la"})
        self.assertEqual(await self.events(bob, 1), [("refused", 0, "bob", "you are muted in this room", 1)])
        carol, complete = await self.member12("join", "Class", "carol")
        self.assertEqual(complete["muted"], ["bob"])
        ann.send({"op": "command", "id": 2, "command": "unmute", "name": "bob"})
        ann.send({"op": "command", "id": 3, "command": "host", "name": "bob"})
        self.assertEqual(await self.events(ann, 6), [
            ("muted", 2, "bob", "", None), ("echo", 2, "ann", None, 1), ("joined", 3, "carol", "", None),
            ("unmuted", 4, "bob", "", None), ("echo", 4, "ann", None, 2),
            ("host", 5, "bob", "", None),
        ])
        self.assertEqual(await self.events(ann, 1), [("echo", 5, "ann", None, 3)])
        self.assertEqual(await self.events(bob, 3), [
            ("joined", 3, "carol", "", None), ("unmuted", 4, "bob", "", None), ("host", 5, "bob", "", None),
        ])
        # The old host is a guest now: its commands are refused, and its leaving closes nothing.
        ann.send({"op": "command", "id": 4, "command": "kick", "name": "carol"})
        refused = await ann.next_event()
        self.assertEqual((refused["kind"], refused["id"]), ("refused", 4))
        self.assertIn("only the host", refused["text"])
        ann.send({"op": "leave"})
        self.assertEqual(await self.events(bob, 1), [("left", 6, "ann", "", None)])
        bob.send({"op": "send", "id": 2, "text": "still here"})  # id 1 was refused, and stays so
        self.assertEqual(await self.events(bob, 1), [("echo", 7, "bob", None, 2)])
        self.assertEqual([e[:4] for e in await self.events(carol, 4)], [
            ("unmuted", 4, "bob", "", None)[:4], ("host", 5, "bob", "", None)[:4], ("left", 6, "ann", "", None)[:4],
            ("message", 7, "bob", "still here"),
        ])

    async def test_malformed_commands_are_refused_and_the_member_stays(self):
        self.start()
        ann, _ = await self.member12("create", "Class", "ann")
        ann.send({"op": "command", "id": 1, "command": "dance", "name": "bob"})
        ann.send({"op": "command", "id": 2, "command": "kick", "name": "bob", "reason": "x" * 201})
        ann.send({"op": "command", "id": 3, "command": "kick", "name": "ann"})
        ann.send({"op": "command", "id": 4, "command": "mute", "name": "nobody"})
        answers = await self.events(ann, 4)
        self.assertEqual([(a[0], a[4]) for a in answers], [("refused", i) for i in (1, 2, 3, 4)])
        for answer, why in zip(answers, ("unknown command", "200 bytes", "yourself", "not in the room")):
            self.assertIn(why, answer[3])
        ann.send({"op": "send", "id": 5, "text": "still in"})
        self.assertEqual((await ann.next_event())["kind"], "echo")

    async def test_a_page_served_11_cannot_command(self):
        self.start()
        ann, _ = await self.member("create", "Class", "ann")
        ann.send({"op": "command", "id": 1, "command": "kick", "name": "bob"})
        error = await ann.next()
        self.assertEqual((error["type"], error["status"]), ("error", 400))
        self.assertIn("1.2", error["message"])
        self.assertEqual((await ann.wait_closed())[0], 4400)

    async def test_history_resends_every_numbered_event_marked(self):
        self.start()
        ann, _ = await self.member12("create", "Class", "ann")
        bob, _ = await self.member12("join", "Class", "bob")
        ann.send({"op": "send", "id": 1, "text": "hello"})
        ann.send({"op": "command", "id": 2, "command": "mute", "name": "bob"})
        await self.events(ann, 4)
        late, complete = await self.member12("join", "Class", "late")
        self.assertEqual(complete["seq"], 4)
        late.send({"op": "history", "first": 1, "last": 4})
        resent = [await late.next_event() for _ in range(4)]
        self.assertEqual([(e["kind"], e["seq"], e["name"], e.get("resent")) for e in resent], [
            ("joined", 1, "bob", True), ("message", 2, "ann", True), ("muted", 3, "bob", True),
            ("joined", 4, "late", True),
        ])
        # A 1.1 page asks in its own numbering, and gets messages only.
        old, complete = await self.member("join", "Class", "old")
        self.assertEqual(complete["seq"], 1)
        old.send({"op": "history", "first": 1, "last": 1})
        e = await old.next_event()
        self.assertEqual((e["kind"], e["seq"], e["text"], e.get("resent")), ("history", 1, "hello", None))


class RestartTests(WebTestCase):
    async def test_a_page_served_12_is_told_to_come_back_when_the_daemon_stops(self):
        self.start()
        ann, _ = await ModerationTests.member12(self, "create", "Class", "ann")
        old, _ = await self.member("join", "Class", "old")
        lobby = await self.browser()
        await ann.next_event()
        await self.svc.stopService()
        # The stop waited for every socket to finish closing: nothing is
        # left in a buffer when the process exits.
        for b in (ann, old, lobby):
            self.assertIsNotNone(b.close_info)
        self.assertEqual(lobby.close_info, (1000, "the server is stopping"))
        # Its room (its host a 1.2 page) is kept: the 1.1 page cannot be, and
        # leaves; the 1.2 one is told the server restarts, to come back.
        left = await ann.next_event()
        self.assertEqual((left["kind"], left["name"]), ("left", "old"))
        self.assertEqual((await ann.next_event())["kind"], "restarting")
        self.assertEqual((await ann.wait_closed())[0], 4004)
        # The 1.1 view, as before: the room is over for it.
        self.assertEqual((await old.next_event())["kind"], "closed")
        self.assertEqual((await old.wait_closed())[0], 4000)

    async def test_a_browser_is_kept_across_a_restart_and_resumes_as_the_same_member(self):
        # The room's host is a UDP member served 1.2: the room is kept, and
        # so is the 1.2 page (its socket cannot be, its membership can); a
        # 1.1 page cannot be carried over: it leaves (LEFT to the rest).
        data = Path(self.mktemp())
        self.start_daemon(*PLAIN, data_dir=data)
        udp, web = self.svc.rooms.udp_port, self.web
        status, complete = await self.ask(wire.CREATE_ROOM, "Kept", {"username": "host", "version": "1.2"})
        self.assertEqual((status, complete["version"]), (200, "1.2"))
        host = wire.Member(reactor, b"Kept", complete, ("127.0.0.1", udp))
        self.addCleanup(host.close)
        host.heartbeat()
        self.keep_alive(host)
        bea, joined = await ModerationTests.member12(self, "join", "Kept", "bea")
        old, _ = await self.member("join", "Kept", "old")
        self.assertEqual((await bea.next_event())["kind"], "joined")
        await self.svc.stopService()
        left = await bea.next_event()
        self.assertEqual((left["kind"], left["name"]), ("left", "old"))
        self.assertEqual((await bea.next_event())["kind"], "restarting")
        self.assertEqual((await bea.wait_closed())[0], 4004)
        self.assertEqual((await old.next_event())["kind"], "closed")
        self.assertEqual((await old.wait_closed())[0], 4000)
        # Started again: the page comes back as the same member.
        self.start_daemon("--web", f"tcp:{web}:interface=127.0.0.1", "--web-no-tls",
                          "--tcp", "tcp:0:interface=127.0.0.1", "--udp", str(udp), data_dir=data)
        self.assertEqual(sorted(self.svc.rooms.rooms["kept"].members), ["bea", "host"])
        back = await self.browser()
        response, again = await back.ask({"op": "resume", "room": "Kept", "username": "bea",
                                          "resume": joined["resume"]})
        self.assertEqual((response["status"], again["resumed"]), (200, True))
        self.assertEqual(sorted(again["members"]), ["bea", "host"])
        host.send(host.seal(send(1, "welcome back")))
        said = await back.next_event()
        self.assertEqual((said["kind"], said["text"]), ("message", "welcome back"))
        # A second page with the spent secret is not bea.
        other = await self.browser()
        response, _ = await other.ask({"op": "resume", "room": "Kept", "username": "bea",
                                       "resume": joined["resume"]})
        self.assertEqual(response["status"], 404)
