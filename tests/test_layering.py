"""Imports point one way: no cycle between modules, the package rules of the design hold,
and every module imports on its own, with no other module of the package loaded.

The import graph is read statically with `ast`, counting imports inside functions too:
a deferred import still ties two modules together, it only hides the tie from a test
that imports the package once.
"""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "t5x_lite"
PACKAGE_DIR = REPO / PACKAGE
NOT_CODE = {"gin", "__pycache__"}  # folders of the package that hold no modules
RUNS_THE_CLI = {"t5x_lite.__main__"}

# Parts whose imports of t5x_lite are limited to a few other parts (besides themselves).
# The package root (`t5x_lite/__init__.py`) holds only the version and counts for no part.
MAY_IMPORT_ONLY = {
    "models": {"parallel", "errors"},
    "storage": {"errors"},
}
# (importer, imported, why): an importer is a part, or "*" for every part but the
# imported one and the entry point `__main__`; the imported side is a part or a module.
MUST_NOT_IMPORT = [
    ("*", "cli", "the command line is the top: nothing below it imports it"),
    ("pipeline", "train", "the data path does not depend on the trainer"),
    ("pipeline", "models.decoder", "a family hands the data path its converter and keys"),
    ("scaling", "train", "the scaling harness drives training as subprocesses"),
    ("train", "models.decoder", "the trainer holds the family interface, not a family"),
    ("inference", "models.decoder", "decoding and evaluation go through the family"),
    ("analysis", "models.decoder", "the planner asks the family for counts and FLOPs"),
    ("observe", "analysis", "observation sits below the analysis that reads it"),
]


# Where each package's files live (setup.py's package_dir maps t5x_lite.data to data/).
SOURCE_DIRS = {PACKAGE: PACKAGE_DIR, f"{PACKAGE}.data": REPO / "data"}


def module_files() -> dict[str, pathlib.Path]:
    """Every module of the package, data/ included, by dotted name."""
    modules = {}
    for package, root in SOURCE_DIRS.items():
        for folder, subfolders, files in os.walk(root):
            subfolders[:] = sorted(name for name in subfolders
                                   if name not in NOT_CODE and not (root == PACKAGE_DIR
                                                                    and name == "data"))
            parts = pathlib.Path(folder).relative_to(root).parts
            for file in files:
                if file.endswith(".py"):
                    stem = [] if file == "__init__.py" else [file[:-3]]
                    modules[".".join([package, *parts, *stem])] = pathlib.Path(folder) / file
    return modules


def is_package(module: str, files: dict[str, pathlib.Path]) -> bool:
    return files[module].name == "__init__.py"


def known_module(name: str, files: dict) -> str | None:
    """`name` if it is a module of the package, else its nearest enclosing one."""
    while name and name not in files:
        name = name.rpartition(".")[0]
    return name or None


def imported_names(node: ast.AST, module: str, files: dict) -> list[str]:
    """The dotted names an import statement loads, relative imports resolved."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        package = module if is_package(module, files) else module.rpartition(".")[0]
        package = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        base = ".".join(filter(None, [package, node.module]))
    else:
        base = node.module or ""
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base
            for alias in node.names]


def module_imports(module: str, files: dict) -> set[str]:
    """The package's modules that `module` imports anywhere in its text, bar its own
    parent packages (Python runs those first anyway)."""
    tree = ast.parse(files[module].read_text(), str(files[module]))
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            for name in imported_names(node, module, files):
                target = known_module(name, files) if name.startswith(PACKAGE) else None
                if target and target != module and not module.startswith(f"{target}."):
                    targets.add(target)
    return targets


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {module: module_imports(module, files) for module in files}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components of `graph`, those with more than one module."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                components.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def one_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A path a -> ... -> a through the modules of one strongly connected component."""
    members, start = set(component), component[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        node = frontier.pop(0)
        for target in sorted(graph[node] & members):
            if target == start:
                return [*paths[node], start]
            if target not in paths:
                paths[target] = [*paths[node], target]
                frontier.append(target)
    return component


def part(module: str) -> str | None:
    """The top-level folder or module of the package that `module` belongs to."""
    rest = module.split(".")[1:]
    return rest[0] if rest else None


def matches(module: str, part_or_module: str) -> bool:
    rest = module.split(".", 1)[1] if "." in module else ""
    return rest == part_or_module or rest.startswith(f"{part_or_module}.")


def rule_violations(graph: dict[str, set[str]]) -> list[str]:
    violations = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            source_part, target_part = part(module), part(target)
            if source_part == target_part or target_part is None:
                continue
            allowed = MAY_IMPORT_ONLY.get(source_part)
            if allowed is not None and target_part not in allowed:
                violations.append(f"{module} imports {target}: {source_part}/ may import "
                                  f"only {sorted(allowed)}")
            for importer, imported, why in MUST_NOT_IMPORT:
                every_part = importer == "*" and source_part != "__main__"
                if (every_part or importer == source_part) and matches(target, imported):
                    violations.append(f"{module} imports {target}: {why}")
    return violations


def test_the_graph_sees_deferred_and_relative_imports():
    graph = import_graph()
    assert "t5x_lite.parallel.distributed" in graph["t5x_lite.cli.main"]  # inside a function
    assert "t5x_lite.data.lm_task" in graph["t5x_lite.data.tasks"]  # `from .lm_task import`


def test_no_import_cycle_between_modules():
    graph = import_graph()
    cycles = [f"{' -> '.join(one_cycle(graph, component))} (the cycle joins "
              f"{len(component)} modules: {', '.join(component)})"
              for component in strongly_connected(graph)]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_package_rules_hold():
    violations = rule_violations(import_graph())
    assert not violations, "\n".join(violations)


def reached_from(graph: dict[str, set[str]], starts: set[str]) -> set[str]:
    reached, frontier = set(starts), list(starts)
    while frontier:
        for target in graph[frontier.pop()] - reached:
            reached.add(target)
            frontier.append(target)
    return reached


def test_the_one_list_of_configurables_reaches_every_configurable():
    files, graph = module_files(), import_graph()
    defining = {module for module, path in files.items()
                if "@gin.configurable" in path.read_text() or "gin.register(" in path.read_text()}
    listed = graph["t5x_lite.config.configurables"]
    missed = defining - reached_from(graph, listed)
    assert not missed, f"register_configurables() does not import {sorted(missed)}"


def test_every_module_imports_on_its_own(tmp_path):
    """Each module in a child of a fresh interpreter that has loaded no t5x_lite module
    (see tests/import_each.py)."""
    modules = sorted(set(module_files()) - RUNS_THE_CLI)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, str(REPO / "tests" / "import_each.py"),
                             str(tmp_path), *modules], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr.strip().splitlines()[-1:]
    failures = [f"{path.name}: {path.read_text()}" for path in sorted(tmp_path.iterdir())]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("graph,cycle", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, ["a", "b", "c", "a"]),
])
def test_a_cycle_is_found_and_named(graph, cycle):
    components = strongly_connected(graph)
    assert components == [["a", "b", "c"]]
    assert one_cycle(graph, components[0]) == cycle


@pytest.mark.parametrize("importer,imported,found", [
    ("t5x_lite.hf.vocabulary", "t5x_lite.cli.main", True),
    ("t5x_lite.__main__", "t5x_lite.cli.main", False),
    ("t5x_lite.models.decoder.model", "t5x_lite.train.state", True),
    ("t5x_lite.models.decoder.model", "t5x_lite.parallel.partitioning", False),
    ("t5x_lite.pipeline.input_pipeline", "t5x_lite.train.steps", True),
    ("t5x_lite.storage", "t5x_lite.observe.metrics", True),
])
def test_a_rule_is_enforced(importer, imported, found):
    assert bool(rule_violations({importer: {imported}, imported: set()})) == found
