"""The package's floors hold: a declared order of packages, no import from a lower floor to a higher one, and no
import cycle between modules, lazy (function-level) imports included.

Why lazy imports count: a cycle hidden inside a function (the evaluation importing a helper from the CLI)
still ties a lower layer to a higher one; the pipeline's direction of flow is only real if no module reaches
back up.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "lightmoe_cli"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST):
    """Every node except those under `if TYPE_CHECKING:` (annotations only, never imported at run time)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in _runtime_nodes(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                # `from pkg import submodule` depends on the submodule, `from pkg import name` on pkg
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
            for t in targets:
                if t in modules and t != name:
                    graph[name].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_no_import_cycle_inside_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# bottom to top: a package imports only from floors below its own (never from its own floor's other packages)
LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("files",),  # atomic writes and the write rules: the standard library only
    ("registry", "paths", "options"),  # generic tables, default locations, option records: no torch, no typer
    ("manifest", "recipes", "loading"),
    ("policies",),  # pure: statistics -> plans
    ("analysis",),  # pure: statistics, outlooks, metrics
    ("models",),  # adapters over transformers' MoE layers
    ("fit",),  # config.json -> counts and plans on the meta device (the models' adapters, no weights)
    ("identity",),
    ("profile",),  # data in -> trace -> statistics
    ("predict", "demo"),
    ("replace",),
    ("bundle",),  # policy -> bundle
    ("runtime",),  # bundle -> served model
    ("export", "evaluation", "serve"),  # serve: bundle -> HTTP (the runtime behind an engine thread)
    ("fleet",),  # serve x K replicas behind a task-affinity ingress (Ray Serve), and its simulator
    ("selftest",),  # drives the whole pipeline on tiny models
    ("report",),
    ("tune",),  # policy x budget x activation searched on held-out text (drives bundle + runtime)
    ("cli",),
    ("lightmoe_cli",),
]


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    floor = {pkg: i for i, names in enumerate(LAYERS) for pkg in names}
    bad = []
    for name, deps in sorted(graph.items()):
        for d in sorted(deps):
            a, b = _package(name), _package(d)
            if a != b and floor[b] >= floor[a]:
                bad.append(f"{name} -> {d} ({b} is not below {a})")
    return bad


def test_every_package_has_a_declared_floor():
    declared = {pkg for names in LAYERS for pkg in names}
    found = {_package(m) for m in import_graph()}
    assert found <= declared, f"declare a floor for {sorted(found - declared)} in LAYERS"
    assert (PACKAGE / "profile" / "__init__.py").exists()


def test_no_package_imports_from_its_floor_or_above():
    bad = upward_imports(import_graph())
    assert not bad, "\n".join(bad)


def test_the_floor_check_finds_an_upward_import():
    assert upward_imports({"lightmoe_cli.models.x": {"lightmoe_cli.export.y"}, "lightmoe_cli.export.y": set()})
    assert upward_imports({"lightmoe_cli.export.y": {"lightmoe_cli.evaluation.z"}, "lightmoe_cli.evaluation.z": set()})
    assert not upward_imports({"lightmoe_cli.export.y": {"lightmoe_cli.models.x"}, "lightmoe_cli.models.x": set()})


def test_pure_layers_do_not_import_upwards():
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith(("lightmoe_cli.policies", "lightmoe_cli.analysis")):
            bad = {d for d in deps if d.startswith(("lightmoe_cli.runtime", "lightmoe_cli.bundle",
                                                    "lightmoe_cli.evaluation", "lightmoe_cli.cli",
                                                    "lightmoe_cli.profile"))}
            assert not bad, f"{name} imports {bad}"
        if not name.startswith("lightmoe_cli.cli"):
            assert "lightmoe_cli.cli" not in deps, f"{name} imports the CLI"
