"""The shape of the code, read from its imports (architecture.md, "Growing the house").

- Domains depend one way: each domain may import only the domains listed below it
  here; no two domains import each other.  Every domain may publish into ``events``,
  which imports no domain.  The ways up are blinker signals connected in
  ``polymicro/domains.py`` (the composition root, like ``cli.py`` and ``demo.py``).
- No schema imports a rules module (a ``service.py``, or ``security``): the API
  contract does not depend on the rules.
- Resources never read documents (no ``.objects``) and never pick cache namespaces.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "polymicro"

# domain → the domains it may import (directly).
ALLOWED = {
    "projects": set(),
    "services": {"projects"},
    "auth": {"projects"},
    "logs": {"services", "projects"},
    "metrics": {"services", "projects"},
    "liveness": {"services", "projects"},
    "ingest": {"logs", "metrics", "services", "projects"},
    "alerts": {"logs", "metrics", "liveness", "services", "projects"},
    "operations": set(),
    "events": set(),
}
ANYONE_MAY_IMPORT = {"events"}
DOMAINS = {path.name for path in PACKAGE.iterdir() if (path / "service.py").exists()}


def _imports(path: Path) -> set[str]:
    """Every ``polymicro.*`` module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "polymicro":
                found.update(f"polymicro.{alias.name}" for alias in node.names)
            elif node.module.startswith("polymicro."):
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("polymicro."))
    return found


def _domain_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in DOMAINS else None


def _domain_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {domain: set() for domain in DOMAINS}
    for domain in DOMAINS:
        for path in (PACKAGE / domain).rglob("*.py"):
            for module in _imports(path):
                other = _domain_of(module)
                if other and other != domain:
                    edges[domain].add(other)
    return edges


def test_every_domain_has_a_place_in_the_layering():
    assert set(ALLOWED) >= DOMAINS, DOMAINS - set(ALLOWED)


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_a_domain_imports_only_the_domains_below_it(domain):
    imported = _domain_edges()[domain] - ANYONE_MAY_IMPORT
    assert imported <= ALLOWED[domain], f"{domain} imports {imported - ALLOWED[domain]}"


def test_no_two_domains_import_each_other():
    edges = _domain_edges()
    pairs = {(a, b) for a, targets in edges.items() for b in targets if a in edges.get(b, ())}
    assert pairs == set()


def test_events_imports_no_domain():
    if "events" in DOMAINS:
        assert _domain_edges()["events"] == set()


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*/schemas.py")), ids=lambda p: p.parent.name)
def test_no_schema_imports_a_rules_module(path):
    rules = {
        m for m in _imports(path) if m.endswith(".service") or m.startswith("polymicro.security")
    }
    assert rules == set()


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.glob("*/resources.py")), ids=lambda p: p.parent.name
)
def test_resources_read_no_documents(path):
    text = path.read_text(encoding="utf-8")
    assert ".objects" not in text
    assert not any(m.endswith(".models") for m in _imports(path))
