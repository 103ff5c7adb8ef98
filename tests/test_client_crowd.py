"""
Issue 13 end to end: C{twistd -n ocm} with its default limits, a teacher's
password room, one student who mistypes it ten times, then thirty
C{ocm-client} processes from one address (loopback) started at once, each
piping one line in: all of them join and chat.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time

from tests.processes import LIMIT, ProcessTestCase

CLASS = 30
PASSWORD = "read aloud"


class CrowdEndToEndTests(ProcessTestCase):
    timeout = 300

    def client(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        return self.spawn(name, ["-m", "ocm.client", "127.0.0.1", "--port", str(self.tcp),
                                 "--name", name, "--room", "Class", *args])

    def test_a_class_joins_at_once_and_chats(self) -> None:
        daemon = self.twistd(ready="ocm listening")

        teacher = self.client("teacher", "--create", "--password", PASSWORD)
        self.wait_for(lambda: "Created room 'Class'" in self.read("teacher.err") or teacher.poll() is not None,
                      "the teacher to create the room")
        for i in range(10):
            typist = self.client("typist", "--join", "--password", f"read alout {i}")
            typist.stdin.close()
            if i < 5:
                self.assertEqual(typist.wait(LIMIT), 1)
                self.assertIn("Wrong password for room 'Class'.", self.read("typist.err"))
        # The typist's last tries wait for their own budget; the class does not.
        self.wait_for(lambda: "trying again" in self.read("typist.err"), "the typist to be told to wait")

        students = []
        for i in range(CLASS):
            s = self.client(f"s{i:02d}", "--join", "--password", PASSWORD)
            s.stdin.write(f"present: s{i:02d}\n".encode())
            s.stdin.close()
            students.append(s)
        for i, s in enumerate(students):
            name = f"s{i:02d}"
            deadline = time.monotonic() + 120
            while s.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            self.assertEqual(s.poll(), 0, self.read(f"{name}.err"))
            self.assertRegex(self.read(f"{name}.out"), rf"\] {name}: present: {name}\n")
        self.wait_for(lambda: all(f"{n}: present: {n}" in self.read("teacher.out")
                                  for n in (f"s{i:02d}" for i in range(CLASS))),
                      "the teacher to read every student")
        teacher.stdin.close()
        self.assertEqual(teacher.wait(LIMIT), 0, self.read("teacher.err"))
        self.assertNotIn("Traceback", "".join(self.read(f"s{i:02d}.err") for i in range(CLASS)))
        self.assertIsNone(re.search(r"(?i)password\W+read aloud", self.read("daemon.log")))
        daemon.send_signal(signal.SIGTERM)
        self.assertIsNotNone(daemon.wait(LIMIT))
