"""The client package stands on the API's schemas alone: nothing in it imports the command line above it."""

from __future__ import annotations

import ast
from pathlib import Path

CLIENT = Path(__file__).resolve().parents[2] / "client"


def test_the_client_never_imports_the_command_line():
    for path in CLIENT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not any(n == "cli" or n.startswith("cli.") for n in names), f"{path.name} imports {names}"
