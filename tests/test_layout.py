"""The package's import structure, read from the source (ast): data flows one way.

Layers (a module may import its own layer or lower ones, never a higher one):
base modules (errors, config, progress, resources, device, nuclei, grids) < metrics, io < data <
model < infer < view < train < cli < demo, __main__. `hovernet/__init__.py` may re-export
lazily. Imports inside functions count. No circle between files, no module over 560 lines,
none in infer/ over 450. Only `hovernet/io/store.py` writes SQL against the nucleus store's
tables.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "hovernet"

BASE = ("errors", "config", "progress", "resources", "device", "nuclei", "grids")
LAYERS = {
    **dict.fromkeys(BASE, 0),
    "metrics": 1,
    "io": 1,
    "data": 2,
    "model": 3,
    "infer": 4,
    "view": 5,
    "train": 6,
    "cli": 7,
    "demo": 8,
    "__main__": 8,
}
SAME_LAYER_ORDER = [("metrics", "io")]  # io may import metrics; metrics may not import io


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """hovernet modules imported anywhere in the file (module level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [
                f"{module}.{a.name}" if f"{module}.{a.name}" in MODULES else module
                for a in node.names
            ]
        else:
            continue
        found.update(t for t in targets if t.startswith("hovernet") and t != name)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _room(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_has_a_layer():
    rooms = {_room(n) for n in MODULES} - {"__init__"}
    assert rooms <= set(LAYERS), f"modules outside the layer table: {rooms - set(LAYERS)}"


def test_imports_run_down_the_layers():
    wrong = []
    for name, deps in GRAPH.items():
        room = _room(name)
        if room == "__init__":
            continue  # the package's lazy public API
        for dep in deps:
            other = _room(dep)
            if other == "__init__" or other == room:
                continue
            up = LAYERS[other] > LAYERS[room]
            sideways = LAYERS[other] == LAYERS[room] and (room, other) in SAME_LAYER_ORDER
            if up or sideways:
                wrong.append(f"{name} -> {dep}")
    assert not wrong, "imports up the layers:\n" + "\n".join(sorted(wrong))


def test_no_import_circles():
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, ()):
            if w not in MODULES:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(MODULES):
        if v not in index:
            visit(v)
    # a package imports its own modules only through hovernet/__init__'s lazy table
    assert not cycles, f"import circles: {cycles}"


def test_the_checks_see_function_level_imports(tmp_path):
    source = "def f():\n    from hovernet.cli.infer import register\n"
    path = tmp_path / "x.py"
    path.write_text(source)
    assert "hovernet.cli.infer" in _imports("hovernet.io.x", path)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size(name):
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    limit = 450 if _room(name) == "infer" else 560
    assert lines <= limit, f"{MODULES[name]} has {lines} lines (at most {limit}): split it"


# SQL naming one of the nucleus store's tables (schema-qualified too: "s.nuclei", "{schema}.meta")
STORE_SQL = re.compile(
    r"\b(FROM|INTO|UPDATE|JOIN|TABLE)\s+(\S+\.)?(nuclei|regions|meta|nuclei_rtree)\b"
)


def test_only_the_store_module_queries_the_store_tables():
    found = [
        f"{MODULES[name]}:{k}: {line.strip()}"
        for name in sorted(MODULES)
        if name != "hovernet.io.store"
        for k, line in enumerate(MODULES[name].read_text(encoding="utf-8").splitlines(), 1)
        if STORE_SQL.search(line)
    ]
    assert not found, "SQL against the store outside hovernet/io/store.py:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "line",
    [
        'db.execute("SELECT COUNT(*) FROM nuclei")',
        'f"SELECT idx FROM {schema}.regions ORDER BY idx"',
        '"INSERT INTO nuclei_rtree SELECT id, cmin, cmax, rmin, rmax FROM s.nuclei"',
        'sql = f"SELECT {cols} FROM idx.nuclei_rtree AS r CROSS JOIN nuclei AS n"',
        '"SELECT key, value FROM meta"',
    ],
)
def test_the_store_sql_check_sees_queries(line):
    assert STORE_SQL.search(line)


def test_the_store_sql_check_passes_prose():
    assert not STORE_SQL.search("the nuclei from the regions of a slide; meta from its store")
    # the one module allowed to is where the queries are
    assert STORE_SQL.search(MODULES["hovernet.io.store"].read_text(encoding="utf-8"))
