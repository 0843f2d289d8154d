"""The folders are the layers: every import inside the package points down, and none forms a cycle.

Read from the source with `ast` (nothing is imported), so a lazy import
inside a function counts as much as one at the top of a module.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "jaxctl"

# folder -> rank; a module may import from a lower rank or from its own folder.
RANKS = {"util": 0, "core": 1, "optim": 2, "control": 2, "models": 3, "envs": 3, "spiking": 3,
         "experiments": 4, "apps": 5}
MAX_LINES = 400


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


MODULE_NAMES = {name for name, _ in _modules()}


def _imports(name, path):
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            # `from pkg import mod` depends on pkg.mod only; `from mod import name` on mod.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULE_NAMES else base
                       for a in node.names]
        else:
            continue
        for target in targets:
            if target == "jaxctl" or target.startswith("jaxctl."):
                yield target


MODULES = dict(_modules())


def _folder(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _resolve(target):
    """The module a dotted import target names (drops a trailing imported symbol)."""
    while target and target not in MODULES:
        target = target.rsplit(".", 1)[0] if "." in target else ""
    return target or None


def test_every_module_sits_in_a_layer_folder():
    stray = [m for m in MODULES if m != "jaxctl" and _folder(m) not in RANKS]
    assert not stray, f"modules outside the layer folders {sorted(RANKS)}: {stray}"


def test_imports_point_down():
    upward = []
    for module, path in MODULES.items():
        if module == "jaxctl":
            continue  # the package root re-exports the public surface
        here = _folder(module)
        for target in _imports(module, path):
            dep = _resolve(target)
            if dep is None or dep == "jaxctl":
                if dep == "jaxctl" and target in ("jaxctl", "jaxctl.__version__"):
                    continue
                upward.append(f"{module} -> {target} (the package root)")
                continue
            there = _folder(dep)
            if there != here and RANKS[there] >= RANKS[here]:
                upward.append(f"{module} ({here}) -> {dep} ({there})")
    assert not upward, "imports that do not point down:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph = {m: {d for t in _imports(m, p) if (d := _resolve(t)) and d != m and d != "jaxctl"}
             for m, p in MODULES.items() if m != "jaxctl"}
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for dep in graph.get(node, ()):
            if dep not in graph:
                continue  # a package __init__ that holds no code of its own
            if state.get(dep) == "open":
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [node])


def test_modules_are_small():
    big = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"
