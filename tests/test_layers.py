"""The package's layers (docs/architecture.md, "Layers"), checked on its import graph.

Library (every module but those below) <- settings (`config`: the runs' dataclasses, defaults,
help and checks) <- applications (`simsiam_keras.apps`) <- command line (`cli`, `commands`). An
import may only point down this list, never up, and no chain of imports (at the top of a module
or inside a function) comes back to where it started. `errors` and `names` are library modules
that the settings read.
"""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "simsiam_keras"
LAYERS = {"config": 1, "apps": 2, "cli": 3, "commands": 3}  # every other module: 0, the library


def _module_name(path):
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path):
    """The package's modules that `path` imports anywhere in it (top level or in a function)."""
    found = set()
    package = _module_name(path).rsplit(".", 1)[0] if path.parent != PACKAGE else ""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(filter(None, ["simsiam_keras", package, base]))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for name in names:
            if name.startswith("simsiam_keras."):
                found.add(name.removeprefix("simsiam_keras."))
    return found


def _graph():
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules.pop("", None)  # the package's __init__: lazy names only
    graph = {}
    for name, path in modules.items():
        # `from simsiam_keras.apps import pretrain` names `apps.pretrain` and `apps`; keep modules.
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
        graph[name] -= {"apps"} if name.startswith("apps.") else set()
    return graph


def _layer(module):
    return LAYERS.get(module.split(".")[0], 0)


def test_imports_only_point_down_the_layers():
    up = [
        f"{m} ({_layer(m)}) imports {d} ({_layer(d)})"
        for m, deps in _graph().items()
        for d in deps
        if _layer(d) > _layer(m)
    ]
    assert not up, up


def test_no_import_cycle():
    graph, state, cycles = _graph(), {}, []

    def visit(node, path):
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(path[path.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_the_check_sees_the_layers():
    # The graph is what the rules above read: a check that found nothing would pass anything.
    graph = _graph()
    assert "apps.pretrain" in graph and "model" in graph["apps.pretrain"]
    assert "apps.pretrain" in graph["apps.export"] and "config" in graph["apps.pretrain"]
    assert {"apps.pretrain", "apps.linear_eval", "apps.knn_eval"} <= graph["commands"]
