"""
The chat page in a real browser: headless Chromium, driven by Selenium,
against C{twistd -n ocm --web} (TLS with the generated certificate), with
an C{ocm-client} process in the same room.

Needs Debian's chromium and chromium-driver (.ci/run installs them). Outside
CI a missing part skips the test with a loud reason; with CI set it fails.
Set OCM_WEB_SCREENSHOTS to a directory (relative to the checkout) to keep
the screenshots there; docs/ has the ones this test took.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import threading
from typing import Any

from twisted.trial import unittest

from ocm.bench.spawn import free_port
from tests.processes import LIMIT, REPO, ProcessTestCase

HOSTILE = "<img src=x onerror=alert(1)>"


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for tool, package in (("chromium", "chromium"), ("chromedriver", "chromium-driver")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install chromium chromium-driver)"
    return None


class Forwarder:
    """
    A TCP relay on loopback between browsers and the daemon, whose
    connections the test can cut, as a lost network would.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listen()

    def listen(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=LIMIT)
            upstream.settimeout(None)
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        """Drop every connection now; new ones are still let through."""
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        """Refuse new connections too (shutdown wakes the blocked accept)."""
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        self.cut()


class BrowserChatTests(ProcessTestCase):
    timeout = 240

    def setUp(self) -> None:
        missing = _missing()
        if missing:
            if os.environ.get("CI"):
                self.fail(f"the browser test cannot run in CI: {missing}")
            print(f"\n*** SKIPPING the browser test: {missing} ***\n", file=sys.stderr)
            raise unittest.SkipTest(f"NO BROWSER TEST: {missing}")
        super().setUp()
        # Relative to the checkout: trial runs tests in _trial_temp.
        self.shots = REPO / os.environ["OCM_WEB_SCREENSHOTS"] if os.environ.get("OCM_WEB_SCREENSHOTS") else self.dir

    def start_daemon(self, *args: str) -> None:
        self.web = free_port(socket.SOCK_STREAM, "127.0.0.1")
        self.daemon = self.twistd("--web", str(self.web), *args, ready="web chat page: HTTPS")

    # -- browsers -------------------------------------------------------------

    def open_browser(self, width: int = 1000, height: int = 720, port: int | None = None) -> Any:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium")
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    f"--window-size={width},{height}", "--lang=en-GB", "--no-first-run"):
            options.add_argument(arg)
        # The daemon's own self-signed certificate, as a person would accept it.
        options.accept_insecure_certs = True
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
        self.addCleanup(driver.quit)
        driver.set_page_load_timeout(LIMIT)
        driver.get(f"https://127.0.0.1:{port or self.web}/")
        self.wait_for(lambda: driver.execute_script("return document.readyState") == "complete", "the page")
        return driver

    def by_id(self, driver: Any, id: str) -> Any:
        from selenium.webdriver.common.by import By

        return driver.find_element(By.ID, id)

    def fill(self, driver: Any, **fields: str) -> None:
        for id, value in fields.items():
            field = self.by_id(driver, id)
            field.clear()
            if value:
                field.send_keys(value)

    def log_lines(self, driver: Any) -> list[str]:
        return [re.sub(r"\s+", " ", line).strip() for line in self.by_id(driver, "log").text.splitlines()]

    def wait_line(self, driver: Any, pattern: str, what: str) -> list[str]:
        return self.wait_for(
            lambda: (lines := self.log_lines(driver)) and any(re.search(pattern, l) for l in lines) and lines,
            what,
        )

    def notice(self, driver: Any) -> str:
        node = self.by_id(driver, "notice")
        return node.text if node.is_displayed() else ""

    def say(self, driver: Any, text: str) -> None:
        from selenium.webdriver.common.keys import Keys

        self.by_id(driver, "line").send_keys(text, Keys.ENTER)  # Enter sends

    def assertNoPageErrors(self, driver: Any, expected: str | None = None) -> None:
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"
                  and not (expected and re.search(expected, e["message"]))]
        self.assertEqual(errors, [], "console errors (CSP violations included)")

    def shot(self, driver: Any, name: str) -> None:
        self.shots.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(self.shots / name))

    # -- the story ------------------------------------------------------------

    def test_two_browsers_and_a_terminal_in_one_room(self) -> None:
        from selenium.common.exceptions import NoAlertPresentException
        from selenium.webdriver.common.by import By

        self.start_daemon()
        alice = self.open_browser()
        self.assertEqual(self.by_id(alice, "rooms-empty").text, "There are no rooms yet: create one.")
        self.assertEqual(alice.switch_to.active_element, self.by_id(alice, "name"))

        # A refusal is a sentence: joining a room that does not exist.
        self.fill(alice, name="alice", room="Lobby")
        self.by_id(alice, "join").click()
        self.wait_for(lambda: "There is no room called “Lobby”." in self.notice(alice), "the 404 sentence")

        self.by_id(alice, "create").click()
        self.wait_line(alice, "You created room “Lobby” as “alice”", "alice's room")
        self.assertEqual(alice.switch_to.active_element, self.by_id(alice, "line"))

        # A terminal joins; its line shows in the page, the page's in the terminal.
        bob = self.spawn("bob", ["-m", "ocm.client", "127.0.0.1", "--port", str(self.tcp),
                                 "--name", "bob", "--room", "Lobby", "--join"])
        self.wait_line(alice, r"^bob joined$", "bob to join")
        bob.stdin.write(b"hello from the terminal\n")
        bob.stdin.flush()
        self.wait_line(alice, r"^\d\d:\d\d:\d\d bob: hello from the terminal$", "bob's line in the page")
        self.say(alice, "hello from the browser")
        self.wait_for(lambda: re.search(r"\] alice: hello from the browser\n", self.read("bob.out")),
                      "alice's line in the terminal")

        # Hostile text stays text: no element made of it, no script run.
        self.say(alice, HOSTILE)
        self.wait_line(alice, re.escape(f"alice: {HOSTILE}") + "$", "the hostile line, as text")
        self.assertEqual(alice.find_elements(By.CSS_SELECTOR, "#log img"), [])
        with self.assertRaises(NoAlertPresentException):
            alice.switch_to.alert.text
        self.wait_for(lambda: f"] alice: {HOSTILE}\n" in self.read("bob.out"), "the hostile line in the terminal")

        # A second browser: a taken name is refused in words, then it joins
        # and sees what was said before it came, set apart.
        carol = self.open_browser(width=390, height=800)  # a phone's width
        self.fill(carol, name="alice", room="Lobby")
        self.by_id(carol, "join").click()
        self.wait_for(lambda: "Someone in room “Lobby” is already called “alice”. Choose another name."
                      in self.notice(carol), "the 409 sentence")
        self.wait_for(lambda: "Lobby" in self.by_id(carol, "rooms").text, "the room list")
        self.shot(carol, "web-lobby.png")
        self.fill(carol, name="carol")
        self.by_id(carol, "name").submit()  # Enter in the form joins
        lines = self.wait_line(carol, "alice: " + re.escape(HOSTILE), "carol's history")
        self.assertEqual(
            [re.sub(r"^\d\d:\d\d:\d\d ", "", line) for line in lines],
            ["Earlier messages", "bob: hello from the terminal", "alice: hello from the browser",
             f"alice: {HOSTILE}", "You joined room “Lobby” as “carol”."],
        )
        self.assertEqual(len(carol.find_elements(By.CSS_SELECTOR, "#log li.earlier")), 3)
        members = self.by_id(carol, "members").text.splitlines()
        self.assertEqual(sorted(members), ["alice (host)", "bob", "carol (you)"])
        self.wait_line(alice, "^carol joined$", "alice to see carol join")
        self.wait_for(lambda: "* carol joined" in self.read("bob.out"), "bob to see carol join")

        self.say(carol, "hi, I am on a phone")
        self.wait_line(alice, "carol: hi, I am on a phone$", "carol's line at alice")
        self.wait_for(lambda: "] carol: hi, I am on a phone\n" in self.read("bob.out"), "carol's line at bob")
        bob.stdin.write(b"welcome carol\n")
        bob.stdin.flush()
        self.wait_line(carol, "bob: welcome carol$", "bob's line at carol")
        self.wait_line(alice, "bob: welcome carol$", "bob's line at alice")
        self.shot(alice, "web-chat.png")
        self.shot(carol, "web-phone.png")

        # Every line once, everywhere.
        for driver in (alice, carol):
            text = "\n".join(self.log_lines(driver))
            for line in ("hello from the terminal", "hello from the browser", HOSTILE,
                         "hi, I am on a phone", "welcome carol"):
                self.assertEqual(text.count(line), 1, f"{line!r} in {text}")
        out = self.read("bob.out")
        for line in ("alice: hello from the browser", f"alice: {HOSTILE}", "carol: hi, I am on a phone",
                     "bob: welcome carol"):
            self.assertEqual(out.count(line), 1, f"{line!r} in {out}")

        # The host leaves: told first that the room will close, and offered
        # the hand-over; then it closes for the other browser and the terminal.
        self.by_id(alice, "leave").click()
        self.wait_for(lambda: "leaving closes room “Lobby” for everyone" in self.notice(alice), "the warning")
        self.assertEqual(self.by_id(alice, "leave").text, "Leave and close the room")
        self.assertNotIn("closed", "\n".join(self.log_lines(carol)))
        self.by_id(alice, "leave").click()
        self.wait_for(lambda: "You left room “Lobby”." in self.notice(alice), "alice back in the lobby")
        self.wait_for(lambda: "Room “Lobby” closed: the host left." in self.notice(carol), "carol to see it close")
        self.assertFalse(self.by_id(carol, "line").is_enabled())
        self.assertEqual(bob.wait(LIMIT), 1, self.read("bob.err"))
        for driver in (alice, carol):
            self.assertNoPageErrors(driver)
        self.assertNotIn("Traceback", self.read("daemon.log"))

    def test_a_guest_reconnects_after_a_dropped_connection(self) -> None:
        self.start_daemon()
        network = Forwarder(self.web)
        self.addCleanup(network.close)
        bob = self.spawn("bob", ["-m", "ocm.client", "127.0.0.1", "--port", str(self.tcp),
                                 "--name", "bob", "--room", "Net", "--create"])
        self.wait_for(lambda: "Created room 'Net'" in self.read("bob.err") or bob.poll() is not None,
                      "bob to create the room")
        dave = self.open_browser(port=network.port)
        self.fill(dave, name="dave", room="Net")
        self.by_id(dave, "join").click()
        self.wait_line(dave, "You joined room “Net” as “dave”", "dave to join")
        self.wait_for(lambda: "* dave joined" in self.read("bob.out"), "bob to see dave join")

        network.close()  # the network is gone for a while: attempts fail
        self.wait_for(lambda: "* dave left" in self.read("bob.out"), "the daemon to see dave's connection go")
        self.wait_for(lambda: "The connection dropped. Reconnecting in 1 second" in self.notice(dave),
                      "the page to say so")
        bob.stdin.write(b"said while dave was away\n")
        bob.stdin.flush()
        self.wait_for(lambda: "Reconnecting in 4 seconds" in self.notice(dave),
                      lambda: f"two failed attempts; the page says {self.notice(dave)!r}")
        network.listen()
        self.wait_for(lambda: "Reconnected." in self.notice(dave), "the page to reconnect")
        lines = self.wait_line(dave, "bob: said while dave was away$", "the missed line")
        self.assertEqual(sum("said while dave was away" in line for line in lines), 1)
        self.wait_for(lambda: self.read("bob.out").count("* dave joined") == 2, "bob to see dave back")
        self.assertEqual(self.read("bob.out").count("* dave joined"), 2)  # one attempt at a time
        self.say(dave, "back again")
        self.wait_for(lambda: "] dave: back again\n" in self.read("bob.out"), "dave's line after reconnecting")
        # The browser reports each attempt that found no server, and nothing else.
        self.assertNoPageErrors(dave, expected=r"WebSocket connection to 'wss://127\.0\.0\.1:\d+/ws' failed")

    def test_refusals_are_sentences(self) -> None:
        self.start_daemon("--password-burst", "2")
        host = self.open_browser()
        self.fill(host, name="host", room="Locked", password="s3cret")
        self.by_id(host, "create").click()
        self.wait_line(host, "You created room “Locked”", "the locked room")
        self.say(host, "é" * 1537)
        self.wait_for(lambda: "That message is too long (3074 bytes); the limit is 3072. Split it up."
                      in self.notice(host), "the size sentence")

        guest = self.open_browser()
        cases = [
            ({"name": " eve", "room": "Locked", "password": ""}, "Your name cannot start or end with a space."),
            ({"name": "eve", "room": "", "password": ""}, "Please type the room's name."),
            ({"name": "eve", "room": "Locked", "password": ""},
             "Room “Locked” has a password. Type it in the password field and join again."),
            ({"name": "eve", "room": "Locked", "password": "guess"}, "That password is not right for room “Locked”."),
            ({"name": "eve", "room": "Locked", "password": "again"}, "That password is not right for room “Locked”."),
            ({"name": "eve", "room": "Locked", "password": "s3cret"},
             "Too many wrong passwords for room “Locked”. Try again in "),
        ]
        for fields, sentence in cases:
            self.fill(guest, **fields)
            self.by_id(guest, "join").click()
            self.wait_for(lambda: sentence in self.notice(guest),
                          lambda: f"{sentence!r}; the page says {self.notice(guest)!r}")
        for driver in (host, guest):
            self.assertNoPageErrors(driver)

    # -- protocol 1.2: moderation and restarts ----------------------------------

    def join_page(self, driver: Any, name: str, room: str, op: str = "join") -> None:
        self.fill(driver, name=name, room=room)
        self.by_id(driver, op).click()
        self.wait_line(driver, f"You {'created' if op == 'create' else 'joined'} room “{room}” as “{name}”",
                       f"{name} in {room}")

    def action(self, driver: Any, label: str, name: str) -> None:
        from selenium.webdriver.common.by import By

        driver.find_element(By.CSS_SELECTOR, f'#members button[aria-label="{label}: {name}"]').click()

    def actions(self, driver: Any) -> list[str]:
        from selenium.webdriver.common.by import By

        return [b.get_attribute("aria-label") for b in driver.find_elements(By.CSS_SELECTOR, "#members button")]

    def members(self, driver: Any) -> list[str]:
        from selenium.webdriver.common.by import By

        return sorted(m.text for m in driver.find_elements(By.CSS_SELECTOR, "#members .member"))

    def test_a_host_page_mutes_removes_bans_and_hands_over(self) -> None:
        self.start_daemon()
        ann = self.open_browser()
        self.join_page(ann, "ann", "Class", "create")
        bob = self.open_browser()
        self.join_page(bob, "bob", "Class")
        carol = self.open_browser()
        self.join_page(carol, "carol", "Class")
        self.wait_for(lambda: self.members(ann) == ["ann (you, host)", "bob", "carol"], "ann's member list")
        self.assertEqual(self.members(carol), ["ann (host)", "bob", "carol (you)"])
        # Only the host has the actions, and not on itself.
        self.assertEqual(self.actions(carol), [])
        self.assertEqual(sorted(self.actions(ann)), sorted(
            f"{a}: {m}" for a in ("Mute", "Make host", "Remove", "Ban") for m in ("bob", "carol")))

        # Mute: everyone is told, the muted one's lines are refused in words.
        self.action(ann, "Mute", "bob")
        for driver in (ann, carol):
            self.wait_line(driver, "^bob was muted by the host$", "the mute")
        self.wait_line(bob, "^You were muted by the host: what you say is not sent$", "bob told he is muted")
        self.wait_for(lambda: self.members(carol) == ["ann (host)", "bob (muted)", "carol (you)"], "bob marked muted")
        self.say(bob, "la la la")
        self.wait_line(bob, "bob: la la la not delivered: you are muted in this room$", "the refused line")
        self.action(ann, "Unmute", "bob")
        self.wait_line(carol, "^bob was unmuted by the host$", "the unmute")
        self.say(bob, "sorry")
        self.wait_line(carol, r"^\d\d:\d\d:\d\d bob: sorry$", "bob's line after the unmute")
        self.assertNotIn("la la la", "\n".join(self.log_lines(carol)))

        # Remove, with a reason: bob is back in the lobby, told why.
        self.action(ann, "Remove", "bob")
        self.assertIn("Remove “bob” from the room?", self.by_id(ann, "confirm-text").text)
        self.by_id(ann, "reason").send_keys("spam")
        self.shot(ann, "web-host.png")
        self.by_id(ann, "confirm-do").click()
        for driver in (ann, carol):
            self.wait_line(driver, "^bob was removed by the host: spam$", "the kick")
        self.wait_for(lambda: "You were removed from the room by the host: spam" in self.notice(bob)
                      and self.by_id(bob, "lobby").is_displayed(), "bob back in the lobby")
        self.wait_for(lambda: self.members(carol) == ["ann (host)", "carol (you)"], "bob gone from the list")

        # A kicked person may come back; a banned one may not, under any name.
        self.join_page(bob, "bob", "Class")
        self.action(ann, "Ban", "bob")
        self.assertIn("Ban “bob”?", self.by_id(ann, "confirm-text").text)
        self.by_id(ann, "confirm-do").click()  # no reason
        self.wait_line(carol, "^bob was banned by the host$", "the ban")
        self.wait_for(lambda: "You were banned from the room by the host" in self.notice(bob), "bob told of the ban")
        for name in ("bob", "robert"):
            self.fill(bob, name=name, room="Class")
            self.by_id(bob, "join").click()
            self.wait_for(lambda: "You are banned from room “Class”." in self.notice(bob)
                          and name not in self.notice(bob), f"{name} refused")

        # Hand over: the actions move, and the old host's leaving closes nothing.
        self.action(ann, "Make host", "carol")
        self.wait_line(ann, "^carol is now the host$", "the hand-over")
        self.wait_line(carol, "^You are now the host$", "the hand-over, for carol")
        self.wait_for(lambda: self.actions(ann) == [] and len(self.actions(carol)) == 4, "the actions to move")
        self.assertIn("You are now the host", self.notice(carol))
        self.assertEqual(self.members(ann), ["ann (you)", "carol (host)"])
        self.by_id(ann, "leave").click()
        self.wait_line(carol, "^ann left$", "ann to leave")
        self.say(carol, "still open")
        self.wait_line(carol, r"^\d\d:\d\d:\d\d carol: still open$", "carol's line echoed")
        self.assertNotIn("closed", "\n".join(self.log_lines(carol)))
        for driver in (ann, bob, carol):
            self.assertNoPageErrors(driver)
        self.assertNotIn("Traceback", self.read("daemon.log"))

    def test_pages_come_back_after_a_crash_and_the_host_makes_the_room_again(self) -> None:
        import signal

        self.come_back_after(signal.SIGKILL, "The connection dropped. Reconnecting")

    def test_pages_come_back_after_a_restart(self) -> None:
        # SIGTERM: the daemon keeps the room, its 1.2 pages' memberships
        # with it; the pages are told the server restarts (4004), and come
        # back as the same members (resume): nothing to make again.
        import signal

        self.come_back_after(signal.SIGTERM, "The server is restarting. Reconnecting", kept=True)
        self.assertIn("The server is stopping or restarting; this page will reconnect when it is back.",
                      self.log_lines(self.pages[1]))

    def come_back_after(self, sig: int, said: str, kept: bool = False) -> None:
        self.start_daemon()
        ann = self.open_browser()
        self.fill(ann, password="pw")
        self.join_page(ann, "ann", "Again", "create")
        bob = self.open_browser()
        self.fill(bob, password="pw")
        self.join_page(bob, "bob", "Again")
        self.pages = (ann, bob)
        self.say(bob, "before the crash")
        self.wait_line(ann, "bob: before the crash$", "the line before")
        self.daemon.send_signal(sig)
        self.daemon.wait(LIMIT)
        for driver in (ann, bob):
            self.wait_for(lambda: said in self.notice(driver), lambda: f"{said!r}: {self.notice(driver)!r}")
        # The same daemon again (same data directory, so the same certificate), without the room.
        again = self.spawn("daemon2", [
            "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", "--logfile", str(self.dir / "daemon2.log"), "ocm",
            "--tcp", "tcp:0:interface=127.0.0.1", "--udp", "0", "--interface", "127.0.0.1",
            "--data-dir", str(self.dir / "data"), "--web", str(self.web),
        ])
        self.wait_for(lambda: "web chat page: HTTPS" in self.read("daemon2.log") or again.poll() is not None,
                      "the daemon to start again")
        if kept:
            self.assertIn("restored 1 rooms with 2 members", self.read("daemon2.log"))
            for driver in (ann, bob):
                self.wait_for(lambda: "Reconnected." in self.notice(driver), lambda: f"{self.notice(driver)!r}")
        else:
            self.wait_for(lambda: "had lost room “Again”" in self.notice(ann), lambda: f"ann: {self.notice(ann)!r}")
            self.wait_line(ann, "created again by you", "ann's marker")
            self.wait_for(lambda: "had lost room “Again”" in self.notice(bob), lambda: f"bob: {self.notice(bob)!r}")
        self.wait_for(lambda: self.members(bob) == ["ann (host)", "bob (you)"], "bob's member list")
        self.say(bob, "after the crash")
        self.wait_line(ann, "bob: after the crash$", "the line after")
        # The room kept its password: it was made again with it.
        third = self.open_browser()
        self.fill(third, name="eve", room="Again")
        self.by_id(third, "join").click()
        self.wait_for(lambda: "has a password" in self.notice(third), "the password still asked for")
        for driver in (ann, bob):
            self.assertNoPageErrors(driver, expected=r"WebSocket connection to 'wss://127\.0\.0\.1:\d+/ws' failed")
