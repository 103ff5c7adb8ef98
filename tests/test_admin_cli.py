"""ocm.admin.cli: what ocm-admin prints, where it looks, and its exit status."""

from __future__ import annotations

import io
import os
import shutil
import socket
import tempfile
import threading

from twisted.trial.unittest import SynchronousTestCase

from ocm.admin import cli
from ocm.admin.protocol import AdminError, encode_refusal, encode_result


class RenderTests(SynchronousTestCase):
    def test_rooms_table(self):
        out = cli.render("rooms", [
            {"name": "Attic", "members": 1, "password": True, "host": "carol", "created": 0},
            {"name": "Lobby", "members": 12, "password": False, "host": None, "created": 86400},
        ])
        self.assertEqual(out.splitlines(), [
            "ROOM   MEMBERS  PASSWORD  HOST   CREATED",
            "Attic  1        yes       carol  1970-01-01 00:00:00Z",
            "Lobby  12       no        -      1970-01-02 00:00:00Z",
        ])
        self.assertEqual(cli.render("rooms", []), "no rooms")

    def test_members_table(self):
        out = cli.render("members", {"room": "Lobby", "members": [
            {"name": "alice", "address": "10.0.0.1:5000", "since": 60, "for": 3600, "host": True,
             "muted": False, "version": "1.2", "transport": "udp"},
        ]})
        self.assertEqual(out.splitlines()[1].split(),
                         ["NAME", "ADDRESS", "SINCE", "FOR", "HOST", "MUTED", "VERSION", "TRANSPORT"])
        self.assertEqual(out.splitlines()[2].split(),
                         ["alice", "10.0.0.1:5000", "1970-01-01", "00:01:00Z", "1h", "yes", "no", "1.2", "udp"])

    def test_status_and_actions(self):
        status = cli.render("status", {
            "version": "0.1.0", "started": 0, "uptime": 7500, "ports": {"tcrp": "0.0.0.0:9001", "udp": 9002,
                                                                       "web": None}, "rooms": 2,
            "max_rooms": 1000, "members": 5, "address_bans": 1, "stats": {}, "counts": {"datagram auth": 3},
        })
        self.assertIn("ocm 0.1.0, up 2h5m", status)
        self.assertIn("ports: tcrp 0.0.0.0:9001, udp 9002\n", status)
        self.assertIn("dropped or refused: datagram auth 3", status)
        self.assertEqual(cli.render("mute", {"room": "Lobby", "name": "bob", "event": 3}), "muted bob in room Lobby")
        self.assertEqual(cli.render("bans", []), "no address bans")
        self.assertIn("removed: bob in Lobby", cli.render("ban-address", {
            "address": "10.0.0.2", "seconds": 600, "until": 600, "removed": [{"room": "Lobby", "name": "bob"}],
        }))


class DefaultSocketTests(SynchronousTestCase):
    def test_where_it_looks(self):
        self.assertEqual(cli.default_socket({"OCM_ADMIN_SOCKET": "/x.sock", "STATE_DIRECTORY": "/s"}), "/x.sock")
        self.assertEqual(cli.default_socket({"STATE_DIRECTORY": "/var/lib/ocm:/other"}), "/var/lib/ocm/admin.sock")
        self.assertEqual(cli.default_socket({"XDG_STATE_HOME": "/home/x/.state"}), "/home/x/.state/ocm/admin.sock")


class ExitStatusTests(SynchronousTestCase):
    def serve(self, reply: bytes, read_first: bool = True) -> str:
        """A one-shot admin socket answering C{reply} (after reading a line, or at once, as a refusal at accept)."""
        where = tempfile.mkdtemp(prefix="ocm-cli-")
        self.addCleanup(shutil.rmtree, where, True)
        path = os.path.join(where, "admin.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        self.addCleanup(listener.close)

        def once() -> None:
            conn, _ = listener.accept()
            with conn:
                if read_first:
                    conn.recv(4096)
                conn.sendall(reply)

        thread = threading.Thread(target=once, daemon=True)
        thread.start()
        self.addCleanup(thread.join, 5)
        return path

    def run_cli(self, *args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = cli.main(list(args), out=out, err=err)
        return code, out.getvalue(), err.getvalue()

    def test_done(self):
        path = self.serve(encode_result([]))
        self.assertEqual(self.run_cli("--socket", path, "--json", "bans"), (0, "[]\n", ""))

    def test_refused_by_the_daemon(self):
        path = self.serve(encode_refusal(AdminError("not-found", "no room named 'x'")))
        self.assertEqual(self.run_cli("--socket", path, "members", "x"), (1, "", "ocm-admin: no room named 'x'\n"))

    def test_refused_at_accept(self):
        path = self.serve(encode_refusal(AdminError("forbidden", "uid 7 may not use it")), read_first=False)
        code, _, err = self.run_cli("--socket", path, "rooms")
        self.assertEqual((code, err), (1, "ocm-admin: uid 7 may not use it\n"))

    def test_unreachable_and_usage(self):
        code, _, err = self.run_cli("--socket", "/nonexistent/admin.sock", "status")
        self.assertEqual(code, 3)
        self.assertIn("cannot reach the daemon at /nonexistent/admin.sock", err)
        self.assertEqual(cli.main(["frobnicate"], out=io.StringIO(), err=io.StringIO()), 2)
