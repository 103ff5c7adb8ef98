"""
ocm-admin end to end: a real daemon in-process, the real ``ocm-admin``
command as a subprocess, a UDP member (tests.wire) and a browser
(tests.websocket) in its rooms; the socket's file mode, its removal at
stop, and a stranger's uid refused (as root, in a forked child).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import reactor, utils
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SkipTest, TestCase

from tests import wire
from tests.daemon import DaemonMixin
from tests.websocket import Browser, open_browser

WEB = ("--web", "tcp:0:interface=127.0.0.1", "--web-no-tls")
NOBODY = 65534


def short_dir(test: TestCase) -> Path:
    """A short absolute directory (a Unix socket's path is at most 107 bytes), removed after C{test}."""
    where = tempfile.mkdtemp(prefix="ocm-admin-")
    test.addCleanup(shutil.rmtree, where, True)
    return Path(where)


def admin_command() -> list[str]:
    """The installed console script, or the module where none is installed."""
    script = Path(sys.executable).parent / "ocm-admin"
    return [str(script)] if script.exists() else [sys.executable, "-m", "ocm.admin.cli"]


class AdminE2ETestCase(DaemonMixin, TestCase):
    timeout = 60

    def start(self, *args: str) -> None:
        self.data = short_dir(self)
        self.socket = self.data / "admin.sock"
        self.start_daemon("--no-tls", *WEB, *args, data_dir=self.data)

    async def admin(self, *args: str) -> tuple[int, str, str]:
        """Run ocm-admin against this daemon: exit status, stdout, stderr."""
        command = admin_command()
        out, err, code = await utils.getProcessOutputAndValue(
            command[0], [*command[1:], "--socket", str(self.socket), *args], env=dict(os.environ),
        )
        return code, out.decode(), err.decode()

    async def admin_json(self, *args: str) -> Any:
        code, out, err = await self.admin("--json", *args)
        self.assertEqual(code, 0, err)
        return json.loads(out)

    async def browser(self, room: str, username: str) -> Browser:
        b = await open_browser(self.svc.web_port.getHost().port)
        self.addCleanup(lambda: b.transport and b.transport.abortConnection())
        response, complete = await b.ask({"op": "join", "room": room, "username": username})
        self.assertEqual(response["status"], 200, response)
        return b


class ListingTests(AdminE2ETestCase):
    async def test_rooms_and_members_with_a_udp_member_and_a_browser_in(self):
        self.logged: list[dict] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)
        self.start()
        alice = await self.enter("Lobby", "alice", create=True)
        self.keep_alive(alice)
        bea = await self.browser("Lobby", "bea")
        self.assertEvent(await alice.event(), wire.JOINED, "bea")
        await self.enter("Attic", "carol", password="secret", create=True)

        code, out, err = await self.admin("rooms")
        self.assertEqual((code, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["ROOM", "MEMBERS", "PASSWORD", "HOST", "CREATED"])
        self.assertEqual([line.split()[:4] for line in lines[1:]],
                         [["Attic", "1", "yes", "carol"], ["Lobby", "2", "no", "alice"]])

        members = await self.admin_json("members", "lobby")
        self.assertEqual(
            [(m["name"], m["host"], m["muted"], m["transport"], m["version"]) for m in members["members"]],
            [("alice", True, False, "udp", "1.1"), ("bea", False, False, "web", "1.1")],
        )
        self.assertEqual(members["members"][0]["address"], f"127.0.0.1:{alice.port.getHost().port}")
        self.assertEqual(members["members"][1]["address"], "127.0.0.1")

        code, out, _ = await self.admin("members", "Lobby")
        self.assertIn("udp", out)
        self.assertIn("web", out)
        status = await self.admin_json("status")
        self.assertEqual((status["rooms"], status["members"]), (2, 3))
        self.assertEqual(status["ports"]["udp"], self.svc.rooms.udp_port)
        self.assertEqual(status["ports"]["tcrp"], f"127.0.0.1:{self.svc.tcp_port}")
        bea.assertQuiet()
        # What the daemon logged holds no secret: not the password, token or key.
        logged = "\n".join(formatEvent(e) for e in self.logged)
        self.assertIn("ocm-admin socket at", logged)
        for secret in ("secret", alice.body["token"], alice.body["key"]):
            self.assertNotIn(secret, logged)

    async def test_a_refusal_is_a_status_and_a_sentence(self):
        self.start()
        code, out, err = await self.admin("members", "Nowhere")
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err, "ocm-admin: no room named 'Nowhere'\n")
        code, _, err = await self.admin("kick", "Lobby")  # no name
        self.assertEqual(code, 2)
        self.assertIn("the following arguments are required: name", err)
        code, _, err = await self.admin("ban-address", "127.0.0.2", "forever")
        self.assertEqual(code, 1)
        self.assertIn("is not a duration", err)


class ActionTests(AdminE2ETestCase):
    async def test_kick_then_close(self):
        self.start()
        alice = await self.enter("Lobby", "alice", create=True)
        bob = await self.enter("Lobby", "bob")
        self.assertEvent(await alice.event(), wire.JOINED, "bob")
        bea = await self.browser("Lobby", "bea")
        for m in (alice, bob):
            self.assertEvent(await m.event(), wire.JOINED, "bea")

        code, out, err = await self.admin("kick", "Lobby", "bob", "--reason", "spam")
        self.assertEqual((code, out, err), (0, "kicked bob in room Lobby\n", ""))
        # The 1.1 view: CLOSED to bob about itself, LEFT to the others.
        self.assertEvent(await bob.event(), wire.CLOSED, "alice", "the server's operator: spam")
        self.assertEvent(await alice.event(), wire.LEFT, "bob")
        left = await bea.next_event()
        self.assertEqual((left["kind"], left["name"]), ("left", "bob"))

        code, out, _ = await self.admin("close", "Lobby", "--reason", "maintenance")
        self.assertEqual(code, 0)
        why = "closed by the server's operator: maintenance"
        self.assertEvent(await alice.event(), wire.CLOSED, "alice", why)
        closed = await bea.next_event()
        self.assertEqual((closed["kind"], closed["text"]), ("closed", why))
        self.assertEqual(self.svc.rooms.rooms, {})
        self.assertEqual(await self.admin_json("rooms"), [])

    async def test_ban_refuses_the_name_and_its_address_in_that_room(self):
        self.start()
        alice = await self.enter("Lobby", "alice", create=True)
        self.keep_alive(alice)
        bob = await self.enter("Lobby", "bob", tcp_bind="127.0.0.2", udp_bind="127.0.0.2")
        self.assertEvent(await alice.event(), wire.JOINED, "bob")
        code, out, err = await self.admin("ban", "Lobby", "bob", "--reason", "flood")
        self.assertEqual((code, out), (0, "banned bob in room Lobby\n"), err)
        self.assertEvent(await bob.event(), wire.CLOSED, "alice", "the server's operator: flood")
        for name, bind in (("bob", "127.0.0.1"), ("bobby", "127.0.0.2")):
            status, _ = await self.ask(wire.JOIN_ROOM, "Lobby", {"username": name}, bind=bind)
            self.assertEqual(status, 403, (name, bind))
        status, _ = await self.ask(wire.JOIN_ROOM, "Lobby", {"username": "carol"}, bind="127.0.0.1")
        self.assertEqual(status, 200)
        self.assertEqual((await self.admin_json("unban", "Lobby", "bob"))["name"], "bob")
        status, _ = await self.ask(wire.JOIN_ROOM, "Lobby", {"username": "bobby"}, bind="127.0.0.2")
        self.assertEqual(status, 200)

    async def test_ban_address_refuses_tcrp_from_it_and_not_others(self):
        self.start()
        code, out, err = await self.admin("ban-address", "127.0.0.2", "1m")
        self.assertEqual(code, 0, err)
        self.assertTrue(out.startswith("banned 127.0.0.2 for 1m"), out)
        status, _ = await self.ask(wire.LIST_ROOMS, b"", {}, bind="127.0.0.2")
        self.assertEqual(status, 403)
        status, _ = await self.ask(wire.LIST_ROOMS, b"", {}, bind="127.0.0.1")
        self.assertEqual(status, 200)
        bans = await self.admin_json("bans")
        self.assertEqual([b["address"] for b in bans], ["127.0.0.2"])
        self.assertLessEqual(bans[0]["left"], 60)
        self.assertEqual((await self.admin("unban-address", "127.0.0.2"))[0], 0)
        status, _ = await self.ask(wire.LIST_ROOMS, b"", {}, bind="127.0.0.2")
        self.assertEqual(status, 200)

    async def test_ban_address_removes_members_already_in(self):
        self.start()
        alice = await self.enter("Lobby", "alice", create=True)
        bob = await self.enter("Lobby", "bob", tcp_bind="127.0.0.2", udp_bind="127.0.0.2")
        self.assertEvent(await alice.event(), wire.JOINED, "bob")
        result = await self.admin_json("ban-address", "127.0.0.2", "10m", "--reason", "abuse")
        self.assertEqual(result["removed"], [{"room": "Lobby", "name": "bob"}])
        self.assertEvent(await bob.event(), wire.CLOSED, "alice",
                         "the server's operator: your address is banned from this server: abuse")
        self.assertEvent(await alice.event(), wire.LEFT, "bob")
        # Its token died with it: what it sends now reaches no one.
        bob.chat("still here?")
        bob.heartbeat()
        with self.assertRaises(Exception):
            await alice.event(timeout=0.5)


class SocketTests(AdminE2ETestCase):
    async def test_the_socket_is_0600_in_the_data_dir_and_removed_at_stop(self):
        self.start()  # the default: admin.sock in --data-dir
        st = os.lstat(self.socket)
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        self.assertEqual(st.st_uid, os.getuid())
        self.assertEqual((await self.admin("status"))[0], 0)
        await self.svc.stopService()
        self.assertFalse(self.socket.exists())
        code, _, err = await self.admin("status")
        self.assertEqual(code, 3)
        self.assertIn("cannot reach the daemon", err)

    async def test_a_second_daemon_on_the_same_socket_does_not_start(self):
        self.start()
        from tests.daemon import run_daemon

        with self.assertRaises(Exception) as cm:
            run_daemon(self, "--no-tls", data_dir=self.data)
        self.assertIn("in use", str(cm.exception))
        self.assertEqual((await self.admin("status"))[0], 0)  # the first one's is untouched

    async def test_no_admin_opens_nothing(self):
        data = short_dir(self)
        self.start_daemon("--no-tls", "--no-admin", data_dir=data)
        self.assertFalse((data / "admin.sock").exists())
        self.assertIsNone(self.svc.admin_listener)

    async def test_a_group_makes_it_0660(self):
        self.start("--admin-group", str(os.getgid()))
        st = os.stat(self.socket)
        self.assertEqual((stat.S_IMODE(st.st_mode), st.st_gid), (0o660, os.getgid()))

    async def test_another_uid_is_refused(self):
        if os.getuid() != 0:
            raise SkipTest("needs root, to connect as another uid (os.setuid in a forked child)")
        self.start()
        # The first line: the file's mode (and its 0700 directory).
        self.assertEqual(await self.connect_as(NOBODY), f"error {13}")
        # The second line, with the file opened to all: SO_PEERCRED.
        os.chmod(self.data, 0o755)
        os.chmod(self.socket, 0o666)
        line = await self.connect_as(NOBODY)
        self.assertTrue(line.startswith("{"), line)
        reply = json.loads(line)
        self.assertEqual((reply["ok"], reply["error"]), (False, "forbidden"))
        self.assertIn(f"uid {NOBODY} may not use", reply["message"])
        # The daemon's own uid (root here) still may.
        self.assertEqual((await self.admin("rooms"))[:2], (0, "no rooms\n"))

    async def connect_as(self, uid: int) -> str:
        """Connect to the socket from a forked child that became C{uid}: the reply line, or "error N"."""
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: no reactor, no Python cleanup, only this
            try:
                os.close(read)
                signal.alarm(10)
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(5)
                    try:
                        s.connect(str(self.socket))
                        try:
                            s.sendall(b'{"cmd": "rooms"}\n')
                        except BrokenPipeError:
                            pass  # refused at accept, as ocm-admin reads on
                        answer = s.recv(4096)
                        answer = answer.split(b"\n")[0] if answer else b"EOF"
                    except OSError as e:
                        answer = f"error {e.errno}".encode()
                os.write(write, answer)
            except BaseException as e:
                os.write(write, f"child failed: {e!r}".encode())
            finally:
                os._exit(0)
        os.close(write)
        for _ in range(100):
            done, _status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            await wire.sleep(reactor, 0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            self.fail("the child did not finish")
        with os.fdopen(read, "rb") as f:
            return f.read().decode()
