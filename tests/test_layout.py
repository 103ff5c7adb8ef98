"""
The tree read as a graph of imports (issue 21): no cycles, no module
importing one of a higher layer, no listener importing another, and the
layout is the one docs/design.md shows.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from twisted.trial.unittest import TestCase

ROOT = Path(__file__).resolve().parent.parent

# Lowest first. A module may import its own layer and the ones below.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("wire", ("ocm.wire.", "ocm.admin.protocol")),
    ("core", ("ocm.server.limits", "ocm.server.bans", "ocm.server.replay", "ocm.server.sends",
              "ocm.server.history", "ocm.server.moderation", "ocm.server.tombstones", "ocm.server.passwords", "ocm.server.hashing", "ocm.server.tls",
              "ocm.server.rooms", "ocm.server.state", "ocm.cluster.url", "ocm.cluster.store")),
    ("desk", ("ocm.server.desk", "ocm.cluster.directory")),
    ("listeners", ("ocm.server.tcrp_server", "ocm.server.relay", "ocm.server.listeners",
                   "ocm.web.", "ocm.irc.", "ocm.admin.server")),
    ("ops", ("ocm.ops.",)),
    ("daemon", ("ocm.server.service", "ocm.server.tap")),
    ("tools", ("ocm.client.", "ocm.bench.", "ocm.admin.cli")),
]

# The ways in: none may import another (each is a peer over the desk).
LISTENERS = ("ocm.server.tcrp_server", "ocm.web.", "ocm.irc.", "ocm.admin.server")

# The client holds no daemon code: it may use the codecs and these pure helpers.
CLIENT_MAY_USE = ("ocm.wire.", "ocm.client.", "ocm.server.limits", "ocm.server.replay", "ocm.server.tls")


def modules() -> dict[str, Path]:
    found = {}
    for path in (ROOT / "ocm").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            continue  # packages hold no code of their own
        found[".".join(parts)] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """What a module imports at run time (TYPE_CHECKING blocks are types only)."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n in known}


def layer(module: str) -> int:
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p) for p in prefixes):
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and docs/design.md")


class ImportGraphTests(TestCase):
    def setUp(self) -> None:
        self.known = modules()
        self.graph = {m: imports(p, self.known) - {m} for m, p in self.known.items()}

    def test_every_module_has_a_layer(self):
        for module in self.known:
            layer(module)

    def test_no_module_imports_a_higher_layer(self):
        wrong = [
            f"{m} ({LAYERS[layer(m)][0]}) imports {d} ({LAYERS[layer(d)][0]})"
            for m, deps in self.graph.items() for d in deps
            if layer(d) > layer(m)
        ]
        self.assertEqual(wrong, [])

    def test_no_listener_imports_another(self):
        def family(module: str) -> str | None:
            return next((p for p in LISTENERS if module == p or module.startswith(p)), None)

        wrong = [
            f"{m} imports {d}" for m, deps in self.graph.items() for d in deps
            if family(m) and family(d) and family(m) != family(d)
        ]
        self.assertEqual(wrong, [])

    def test_the_client_holds_no_daemon_code(self):
        wrong = [
            f"{m} imports {d}" for m, deps in self.graph.items() if m.startswith("ocm.client.")
            for d in deps if not d.startswith(CLIENT_MAY_USE)
        ]
        self.assertEqual(wrong, [])

    def test_no_cycles(self):
        done: set[str] = set()
        path: list[str] = []

        def visit(module: str) -> None:
            if module in path:
                self.fail("import cycle: " + " -> ".join(path[path.index(module):] + [module]))
            if module in done:
                return
            path.append(module)
            for dep in sorted(self.graph[module]):
                visit(dep)
            path.pop()
            done.add(module)

        for module in sorted(self.graph):
            visit(module)

    def test_the_design_document_lists_every_module(self):
        design = (ROOT / "docs" / "design.md").read_text()
        listed = set(re.findall(r"`(ocm/[a-z_/]+\.py)`", design))
        on_disk = {str(p.relative_to(ROOT)) for p in self.known.values()}
        self.assertEqual(sorted(on_disk - listed), [], "modules missing from docs/design.md")
        self.assertEqual(sorted(listed - on_disk), [], "docs/design.md names modules that are not there")
