"""The tree tells the story (README, Layout): few modules at the top, the rank's side apart from the
driver's, and no import circle."""

import ast
from pathlib import Path

from helpers import ROOT

PACKAGES = ("pipeline", "launchers", "hydra_plugins")
# What a training rank runs and unpickles: its own folder, the config, the errors, the job it is handed
# and the tracking door.
RANK_SIDE = ("pipeline.rank", "pipeline.config", "pipeline.errors", "pipeline.job", "pipeline.track")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def imports(path: Path, top_level_only: bool) -> set[str]:
    """The project modules a file imports (`from pipeline.x import y` counts y when it is a module),
    leaving out those under `if TYPE_CHECKING:`; top_level_only: not those inside functions."""
    known = modules()
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        counted = not (top_level_only and in_function)
        if isinstance(node, ast.Import) and counted:
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and counted:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        inside = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(tree, False)
    return {name for name in found if name in known}


def on_rank_side(name: str) -> bool:
    return name == "pipeline" or any(name == side or name.startswith(side + ".") for side in RANK_SIDE)


def test_at_most_eight_modules_directly_in_pipeline() -> None:
    top = sorted(p.name for p in (ROOT / "pipeline").glob("*.py"))
    assert len(top) <= 8, top


def test_the_rank_side_imports_nothing_from_the_driver_side() -> None:
    crossing = {
        name: sorted(other for other in imports(path, top_level_only=False) if not on_rank_side(other))
        for name, path in modules().items()
        if on_rank_side(name)
    }
    crossing = {name: others for name, others in crossing.items() if others}
    assert not crossing, crossing
    assert len([name for name in modules() if name.startswith("pipeline.rank.")]) >= 8  # the rule bites


def test_no_import_circle() -> None:
    graph = {name: imports(path, top_level_only=True) - {name} for name, path in modules().items()}
    # A package's __init__ is imported with any of its modules: an edge into a module is one into its
    # parents too.
    for name in list(graph):
        graph[name] |= {parent for other in graph[name] for parent in _parents(other) if parent in graph}
        graph[name].discard(name)
        graph[name] -= set(_parents(name))
    circle = _find_circle(graph)
    assert circle is None, " -> ".join(circle)


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                found = walk(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = walk(node)
            if found:
                return found
    return None
