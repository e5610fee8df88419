"""The package's import structure, read from the source (ast): data flows one way.

Layers (a module may import its own layer or lower ones, never a higher one):
base modules (errors, config, progress, resources, device, nuclei, grids) < metrics, io < data <
model < infer < view < train < cli < demo, __main__. `hovernet/__init__.py` may re-export
lazily. Imports inside functions count. No circle between files, no module over 560 lines,
none in infer/ over 450. Only `hovernet/io/store.py` writes SQL against the nucleus store's
tables. Outside cli/, no function over 80 lines or 6 parameters unless it takes a config object
(see `oversized_functions`).
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


# ---------------------------------------------------------------- function size (issue 27)
# Outside hovernet/cli/ no function (methods and nested functions included) is over MAX_LINES
# lines (`def` line to last line, docstring included, decorators not) or takes over MAX_PARAMS
# parameters (self / cls not counted), unless one of its parameters is annotated with a config
# type: a dataclass of the package whose name ends in one of CONFIG_SUFFIXES (settings that
# travel together, e.g. `EngineConfig`, `TrainSetup`, `PatchOptions`).
MAX_LINES, MAX_PARAMS = 80, 6
CONFIG_SUFFIXES = ("Config", "Options", "Plan", "Setup")

# Documented public API whose users pass keyword options (changing it would break them): over
# MAX_PARAMS parameters allowed, the line limit still holds. file:function -> why.
KEYWORD_API = {
    "data/annotated.py:load_annotated": "docs/training.md, docs/training-data.md: an image and "
    "its annotation, with the readers' keyword options (type_info, merge, min_size, ...)",
    "metrics/detection.py:type_stats": "README, docs/metrics.md: four per-image lists (true / "
    "pred centroids and types) and radius=, type_ids=, as the original's compute_stats",
    "metrics/multiclass.py:pannuke_pq": "docs/metrics.md: four per-image map lists, the tissue "
    "names and class_ids=, match_iou=, as PanNuke's metrics",
    "infer/predict.py:segment_image": "README, docs/inference.md: the Python API's one call, an "
    "image with batch_size=, precision=, backend=, input_mpp=, proc_mpp=, phases=",
}


def _config_types(sources: list[str]) -> set[str]:
    """Names of the dataclasses defined in `sources` that end in one of CONFIG_SUFFIXES."""
    names = set()
    for source in sources:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef) and node.name.endswith(CONFIG_SUFFIXES):
                decorators = [d.func if isinstance(d, ast.Call) else d for d in node.decorator_list]
                if any(ast.unparse(d).endswith("dataclass") for d in decorators):
                    names.add(node.name)
    return names


def _takes_config(args: list[ast.arg], config_types: set[str]) -> bool:
    for arg in args:
        if arg.annotation is None:
            continue
        annotation = arg.annotation
        if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
            annotation = ast.parse(annotation.value, mode="eval").body  # a quoted annotation
        named = {n.id for n in ast.walk(annotation) if isinstance(n, ast.Name)}
        named |= {n.attr for n in ast.walk(annotation) if isinstance(n, ast.Attribute)}
        if named & config_types:
            return True
    return False


def oversized_functions(source: str, config_types: set[str]) -> dict[str, dict[str, int]]:
    """{qualified name ("Class.method", "outer.inner"): {"lines": n} and / or {"params": n}}
    of the functions in `source` over MAX_LINES lines or, without a config parameter, over
    MAX_PARAMS parameters."""
    found: dict[str, dict[str, int]] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                a = child.args
                args = [*a.posonlyargs, *a.args, *a.kwonlyargs]
                args += [x for x in (a.vararg, a.kwarg) if x is not None]
                if args and args[0].arg in ("self", "cls") and isinstance(node, ast.ClassDef):
                    args = args[1:]
                lines = child.end_lineno - child.lineno + 1
                over = {}
                if lines > MAX_LINES:
                    over["lines"] = lines
                if len(args) > MAX_PARAMS and not _takes_config(args, config_types):
                    over["params"] = len(args)
                if over:
                    found[name] = over
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def _package_offenders() -> dict[str, dict[str, int]]:
    sources = {p: p.read_text(encoding="utf-8") for p in sorted(PACKAGE.rglob("*.py"))}
    config_types = _config_types(list(sources.values()))
    found = {}
    for path, source in sources.items():
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("cli/"):
            continue
        for name, over in oversized_functions(source, config_types).items():
            found[f"{rel}:{name}"] = over
    return found


def test_functions_outside_cli_are_short_and_take_few_parameters():
    found = _package_offenders()
    wrong = []
    for key, over in sorted(found.items()):
        if key in KEYWORD_API:
            over = {k: v for k, v in over.items() if k != "params"}
        if over:
            wrong.append(f"{key}: " + ", ".join(f"{v} {k}" for k, v in over.items()))
    limits = f"at most {MAX_LINES} lines and {MAX_PARAMS} parameters"
    assert not wrong, f"functions over {limits} (split them, or pass a config object):\n" + (
        "\n".join(wrong)
    )
    stale = sorted(k for k in KEYWORD_API if "params" not in found.get(k, {}))
    assert not stale, "allowed above but no longer over the limits: remove\n" + "\n".join(stale)


FUNCTIONS = """
from dataclasses import dataclass

@dataclass(frozen=True)
class WorkOptions:
    n: int = 1

def wide(a, b, c, d, e, f, g):
    pass

def six(a, b, c, d, *, e, f):
    pass

def configured(a, b, c, d, e, f, options: "WorkOptions"):
    pass

def configured_optional(a, b, c, d, e, f, options: WorkOptions | None = None):
    pass

def not_a_config(a, b, c, d, e, f, options: Unknown):
    pass

class Thing:
    def method(self, a, b, c, d, e, f):
        pass

    def wide_method(self, a, b, c, d, e, f, *rest):
        pass

def outer():
    def inner(a, b, c, d, e, f, **kw):
        pass
"""


def test_the_function_check_sees_wide_long_and_nested_functions():
    long_body = "def long():\n" + "    x = 1\n" * MAX_LINES
    short_body = "def fits():\n" + "    x = 1\n" * (MAX_LINES - 1)
    source = FUNCTIONS + long_body + short_body
    found = oversized_functions(source, _config_types([source]))
    assert found == {
        "wide": {"params": 7},
        "not_a_config": {"params": 7},
        "Thing.wide_method": {"params": 7},
        "outer.inner": {"params": 7},
        "long": {"lines": MAX_LINES + 1},
    }
    # a class named like a config that is not a dataclass does not count
    plain = FUNCTIONS.replace("@dataclass(frozen=True)\n", "")
    assert "configured" in oversized_functions(plain, _config_types([plain]))
