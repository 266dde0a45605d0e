"""Import hygiene: the cost model stays light (no torch) so tuning workers start fast; imports go one way."""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import networkx as nx


def _imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(out.split())


def test_costmodel_does_not_import_torch() -> None:
    modules = _imported_after("import paratune.costmodel, paratune.graphs, paratune.problem")
    assert "paratune.costmodel" in modules
    assert not {m for m in modules if m == "torch" or m.startswith(("torch.", "transformers"))}


def test_cli_start_does_not_import_torch() -> None:
    modules = _imported_after("import paratune.cli")
    assert "torch" not in modules


# -- one-way imports ------------------------------------------------------------------------------------------
#
# The import rule, written once (docs/architecture.md explains it): each layer of the package and the layers it
# may import. Read top to bottom it is the data path: model -> graph -> cost model -> problem -> tuner -> env ->
# agent -> study -> campaign store -> dashboard -> command line. A layer is a top-level folder of the package;
# the root's modules are shared leaves importable from anywhere.
#
# Edges are every `import` / `from ... import` statement in a module (at module level, inside functions, inside
# `if TYPE_CHECKING:`), a lazy package's name table (`_NAMES = {...}` for `lazy_getattr`), and a string that
# names a module file (`"paratune.search._dp"`, `"paratune.envs._mapping:MappingEnv"`), which registries import
# by name. Cycles are looked for among runtime edges (`if TYPE_CHECKING:` imports never run); the layer rule
# applies to every edge. Imports of torch inside functions are fine: this graph is of paratune's own modules.

LAYERS: dict[str, frozenset[str]] = {
    "graphs": frozenset(),
    "costmodel": frozenset({"graphs"}),
    "problem": frozenset({"costmodel", "graphs"}),
    "serving": frozenset({"costmodel", "graphs"}),
    "search": frozenset({"serving", "problem", "costmodel", "graphs"}),
    "envs": frozenset({"search", "serving", "problem", "costmodel", "graphs"}),  # the reward's baseline is a heuristic
    "agents": frozenset({"envs", "search", "serving", "problem", "costmodel", "graphs"}),
    "study": frozenset({"search", "serving", "problem", "costmodel", "graphs"}),
    "campaign": frozenset({"study", "search", "serving", "problem", "costmodel", "graphs"}),
    "dashboard": frozenset({"campaign", "study", "serving", "problem", "costmodel", "graphs"}),
    "cli": frozenset(
        {"dashboard", "campaign", "study", "agents", "envs", "search", "serving", "problem", "costmodel", "graphs"}
    ),
}

#: Root modules and data packages any layer may import; they import nothing of paratune themselves.
SHARED = frozenset({"paratune", "paratune._lazy", "paratune._limits", "paratune._provenance", "paratune.configs"})

#: Layers another layer may read through the public package only (``paratune.campaign``, not ``._store``), and
#: the libraries it must not import: the dashboard reads the campaign store through the store's API, never its
#: tables or SQL.
PUBLIC_ONLY: dict[str, frozenset[str]] = {"dashboard": frozenset({"campaign", "study"})}
FORBIDDEN_LIBRARIES: dict[str, frozenset[str]] = {"dashboard": frozenset({"sqlalchemy", "sqlite3", "psycopg"})}

_ROOT = Path(__file__).resolve().parent.parent
_NOT_PACKAGE = {"tests", "benchmarks", "runs", "build", "docs", "scripts", ".venv", ".git"}


@dataclass(frozen=True)
class _Edge:
    source: str
    target: str
    line: int
    runtime: bool  # False for imports under `if TYPE_CHECKING:`


def _package_modules() -> dict[str, Path]:
    out = {}
    for path in sorted(_ROOT.rglob("*.py")):
        rel = path.relative_to(_ROOT)
        if rel.parts[0] in _NOT_PACKAGE:
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(["paratune", *parts])] = path
    return out


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            ids.update(id(sub) for stmt in node.body for sub in ast.walk(stmt))
    return ids


def _is_lazy_table(node: ast.AST) -> bool:
    """``_NAMES = {...}``: the name -> module table a lazy package hands to ``lazy_getattr``."""
    return (
        isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "_NAMES" for t in node.targets)
        and isinstance(node.value, ast.Dict)
    )


def _named_modules(
    module: str, path: Path, modules: dict[str, Path], tree: ast.Module | None = None
) -> list[tuple[str, ast.AST]]:
    """(imported module, statement) for every import-like reference in ``module``'s source."""
    tree = tree or ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[tuple[str, ast.AST]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            # `from pkg import sub` imports the submodule when there is one, else a name of pkg
            out += [(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base, node) for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            name = node.value.partition(":")[0]  # a module file, not a package (`python -m paratune.campaign`)
            if name.startswith("paratune.") and name in modules and modules[name].name != "__init__.py":
                out.append((name, node))
        elif _is_lazy_table(node) and path.name == "__init__.py":
            assert isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
            for value in node.value.values:
                if isinstance(value, ast.Constant) and str(value.value).startswith("."):
                    out.append((package + str(value.value), node))
    return out


@functools.cache
def _edges() -> tuple[_Edge, ...]:
    modules = _package_modules()
    edges = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        type_only = _type_checking_nodes(tree)
        for name, node in _named_modules(module, path, modules, tree):
            target = name
            while target and target not in modules:  # `import paratune.x.y` names module paratune.x.y
                target = target.rpartition(".")[0]
            if not name.startswith("paratune") or not target or target == module:
                continue
            edges.append(_Edge(module, target, getattr(node, "lineno", 0), id(node) not in type_only))
    return tuple(edges)


def _layer(module: str) -> str:
    if module in SHARED:
        return "shared"
    top = module.split(".")[1]
    return top


def test_the_import_graph_sees_every_kind_of_edge() -> None:
    """The checks below are only as good as the graph: it must hold each kind of edge it claims to."""
    edges = {(e.source, e.target): e for e in _edges()}
    assert ("paratune.envs._mapping", "paratune.envs._features") in edges  # module-level relative import
    assert ("paratune.campaign", "paratune.campaign._store") in edges  # a lazy package's name table
    assert ("paratune.search", "paratune.search._heuristics") in edges  # a registry's module name
    assert ("paratune.agents", "paratune.agents._rl_tuner") in edges  # a registry entry "module:Class"
    assert not edges[("paratune.costmodel._batch_eval", "paratune.costmodel._analytic")].runtime  # TYPE_CHECKING
    assert ("paratune.costmodel._analytic", "paratune.graphs") in edges  # `from ..graphs import X`
    assert len({_layer(e.source) for e in _edges()}) >= len(LAYERS)


def test_no_import_cycles() -> None:
    runtime = [e for e in _edges() if e.runtime]
    graph = nx.DiGraph([(e.source, e.target) for e in runtime])
    line = {(e.source, e.target): e.line for e in runtime}
    shown = []
    for tangle in (c for c in nx.strongly_connected_components(graph) if len(c) > 1):
        loop = nx.find_cycle(graph.subgraph(tangle))  # one cycle of the tangle, each import with its line
        shown.append(" -> ".join(f"{a}:{line[a, b]}" for a, b in loop) + f" -> {loop[0][0]}")
    assert not shown, "import cycles (move the shared definitions into a leaf module):\n" + "\n".join(shown)


def test_every_module_belongs_to_a_layer() -> None:
    unknown = sorted({m for m in _package_modules() if _layer(m) not in {*LAYERS, "shared"}})
    assert not unknown, f"modules outside the layer table (add their folder to LAYERS): {unknown}"


def test_imports_only_go_down_the_layers() -> None:
    wrong = []
    for e in _edges():
        src, dst = _layer(e.source), _layer(e.target)
        if src == "shared" and dst != "shared":
            wrong.append(f"{e.source}:{e.line} imports {e.target} (a shared leaf imports nothing of paratune)")
        elif src not in (dst, "shared") and dst != "shared" and dst not in LAYERS.get(src, frozenset()):
            wrong.append(f"{e.source}:{e.line} imports {e.target} ({src} may import {sorted(LAYERS[src])})")
        elif dst in PUBLIC_ONLY.get(src, frozenset()) and e.target != f"paratune.{dst}":
            wrong.append(f"{e.source}:{e.line} imports {e.target} ({src} uses paratune.{dst}'s public API only)")
    assert not wrong, "upward or private imports:\n" + "\n".join(sorted(set(wrong)))


def test_the_dashboard_uses_no_database_library() -> None:
    modules = _package_modules()
    wrong = []
    for module, path in modules.items():
        banned = FORBIDDEN_LIBRARIES.get(_layer(module), frozenset())
        for name, node in _named_modules(module, path, modules):
            if name.split(".")[0] in banned:
                wrong.append(f"{module}:{getattr(node, 'lineno', 0)} imports {name}")
    assert not wrong, "the dashboard reads the campaign store through its API:\n" + "\n".join(wrong)
