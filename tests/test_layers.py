"""The package's shape: layers that import only downward, no circles, no borrowed private names.

Every `import` in the package is read, at module level and inside functions alike, so an import
moved into a function to dodge a circle is caught as well.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pipelines"

# lowest first: a module may import its own layer and those before it
LAYERS = ["core", "config", "io", "reports", "tracking", "serving", "engines", "stages", "cli"]
# the import paths of earlier releases, which pickled model versions name: nothing imports them
COMPAT = {"pipelines.pyfunc", "pipelines.scorer", "pipelines.features", "pipelines.contract"}
# libraries a layer must not use
FORBIDDEN = {
    "core": {"hydra", "mlflow", "omegaconf", "dask", "distributed"},
    "config": {"mlflow"},
    "io": {"hydra", "mlflow"},
    "reports": {"hydra", "mlflow"},
    # the scoring server reaches the registry through tracking, and reads no Hydra config
    "serving": {"hydra", "omegaconf", "mlflow", "dask", "distributed"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py") if "conf" not in p.parts}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "package"


def rank(module: str) -> int:
    name = layer(module)
    return LAYERS.index(name) if name in LAYERS else -1


def imports(module: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import of the package in `module`."""
    found = []
    tree = ast.parse(MODULES[module].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in MODULES:  # `from pipelines.core import contract`
                    found.append((sub, [], node.lineno))
                else:
                    found.append((node.module, [alias.name], node.lineno))
    return found


def package_imports(module: str):
    return [
        (m, names, line) for m, names, line in imports(module) if m.split(".")[0] == "pipelines"
    ]


def graph() -> dict[str, set[str]]:
    """Each module and the package modules it imports."""
    return {
        module: {t for t, _, _ in package_imports(module) if t != "pipelines"} for module in MODULES
    }


def test_every_module_belongs_to_a_layer():
    strays = [m for m in MODULES if rank(m) < 0 and m != "pipelines" and m not in COMPAT]
    assert not strays, f"modules outside the layers {LAYERS}: {strays}"


def test_imports_go_only_downward():
    upward = []
    for module in MODULES:
        for target, _, line in package_imports(module):
            if target == "pipelines" or module in COMPAT:
                continue
            if target in COMPAT:
                upward.append(f"{module}:{line} imports {target} (kept for old pickles only)")
            elif rank(target) > rank(module):
                upward.append(
                    f"{module}:{line} imports {target} ({layer(target)} is above {layer(module)})"
                )
    assert not upward, "\n".join(upward)


def test_no_import_circles():
    try:
        tuple(graphlib.TopologicalSorter(graph()).static_order())
    except graphlib.CycleError as err:
        pytest.fail("import circle: " + " -> ".join(err.args[1]))


def test_the_circle_check_finds_a_circle():
    """The check itself: a circle of three modules is reported."""
    with pytest.raises(graphlib.CycleError):
        tuple(graphlib.TopologicalSorter({"a": {"b"}, "b": {"c"}, "c": {"a"}}).static_order())


def test_a_stage_imports_no_other_stage():
    """What two commands share lives below both; only `run`, the whole chain, calls other stages."""
    crossing = []
    for module in MODULES:
        if layer(module) != "stages" or module.endswith((".runner", ".run")):
            continue
        for target, _, line in package_imports(module):
            if (
                layer(target) == "stages"
                and not target.endswith(".runner")
                and target != "pipelines.stages"
            ):
                crossing.append(f"{module}:{line} imports {target}")
    assert not crossing, "\n".join(crossing)


def test_no_private_name_is_imported_across_modules():
    borrowed = [
        f"{module}:{line} imports {name} from {target}"
        for module in MODULES
        for target, names, line in package_imports(module)
        for name in names
        if name.startswith("_")
    ]
    assert not borrowed, "\n".join(borrowed)


@pytest.mark.parametrize("name", sorted(FORBIDDEN))
def test_lower_layers_keep_out_of_frameworks(name):
    used = [
        f"{module}:{line} imports {target}"
        for module in MODULES
        if layer(module) == name
        for target, _, line in imports(module)
        if target.split(".")[0] in FORBIDDEN[name]
    ]
    assert not used, "\n".join(used)


def test_the_walk_sees_imports_inside_functions(tmp_path):
    """The check itself: an import inside a function counts like one at the top."""
    tree = ast.parse("def f():\n    from pipelines.stages import score\n")
    found = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert found == ["pipelines.stages"]
    assert rank("pipelines.stages.score") > rank("pipelines.core.contract")


# the simulator's long functions read as one story of a session's draws
LONG_ALLOWED = {"pipelines.core.synthetic"}
MAX_LINES = 60


def test_functions_fit_on_a_screen():
    """No function over 60 lines outside the simulator, unless its docstring says why it is long."""
    long = []
    for module, path in MODULES.items():
        if module in LONG_ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                says_why = "long because" in (ast.get_docstring(node) or "").lower()
                if lines > MAX_LINES and not says_why:
                    long.append(f"{module}.{node.name}: {lines} lines")
    assert not long, "\n".join(long)


TESTS = Path(__file__).resolve().parent


def test_tests_import_no_private_names():
    """Tests use a module's public names only: what they pin down is what callers may rely on."""
    borrowed = []
    for path in TESTS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipelines"):
                borrowed += [
                    f"{path.relative_to(TESTS)}:{node.lineno} imports {a.name} from {node.module}"
                    for a in node.names
                    if a.name.startswith("_")
                ]
    assert not borrowed, "\n".join(borrowed)


# modules whose tests live elsewhere: the compatibility re-exports (tests/tracking/
# test_legacy_models.py), the models-from-code stub (tests/tracking/test_model_format.py) and the
# engine selector (tests/engines/test_local.py)
TESTED_ELSEWHERE = COMPAT | {"pipelines.tracking.model_code", "pipelines.engines"}


def test_every_module_has_its_test_file():
    """The tests mirror the package: `pipelines/<layer>/<name>.py` -> `tests/<layer>/test_<name>.py`."""
    missing = []
    for module, path in MODULES.items():
        if (
            path.name == "__init__.py"
            and module != "pipelines.engines"
            or module in TESTED_ELSEWHERE
        ):
            continue
        parts = module.split(".")[1:]
        expected = TESTS.joinpath(*parts[:-1], f"test_{parts[-1]}.py")
        if not expected.is_file():
            missing.append(f"{module}: {expected.relative_to(TESTS.parent)}")
    assert not missing, "\n".join(missing)
