"""
contrib/systemd/ocm@.service, the cluster node template, passes
C{systemd-analyze verify} with no complaint (with the venv's twistd in place
of /opt/ocm/venv's), as a template and as an instance.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SkipTest, TestCase

import ocm

UNIT = Path(ocm.__file__).resolve().parent.parent / "contrib" / "systemd" / "ocm@.service"


class TemplateUnitTests(TestCase):
    def setUp(self) -> None:
        if shutil.which("systemd-analyze") is None:
            reason = "systemd-analyze is not installed, so the unit cannot be verified"
            if os.environ.get("CI"):
                self.fail(reason)
            raise SkipTest(reason)
        twistd = Path(sys.executable).parent / "twistd"
        if not twistd.exists():
            self.fail(f"{twistd} is missing: the test needs the venv's twistd")
        self.text = UNIT.read_text().replace("/opt/ocm/venv/bin/twistd", str(twistd))
        self.dir = Path(self.mktemp())
        self.dir.mkdir()

    def verify(self, name: str, text: str) -> subprocess.CompletedProcess:
        path = self.dir / name
        path.write_text(text)
        return subprocess.run(
            ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60,
        )

    def test_template_and_instance_verify_clean(self) -> None:
        for name in ("ocm@.service", "ocm@1.service"):
            done = self.verify(name, self.text)
            self.assertEqual((done.returncode, done.stdout + done.stderr), (0, ""), name)

    def test_a_broken_line_is_noticed(self) -> None:
        done = self.verify("ocm@2.service", self.text.replace("Restart=on-failure", "Restart=sometimes"))
        self.assertIn("sometimes", done.stdout + done.stderr)

    def test_each_instance_reads_its_own_options_and_waits_for_redis(self) -> None:
        lines = self.text.splitlines()
        self.assertIn("EnvironmentFile=/etc/default/ocm-%i", lines)
        self.assertIn("Wants=redis-server.service", lines)
        self.assertIn("After=network.target redis-server.service", lines)
