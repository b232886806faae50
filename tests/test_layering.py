"""The package's layers (docs/design.md §2), read from the source: ``kernels/`` imports nothing from
``electra_fast``, and no module imports, at its top or inside a function, one that imports it back.

``python tests/test_layering.py`` prints the import graph's cycles."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def module_files() -> dict:
    """Module name -> file, for electra_fast and kernels/ (installed as electra_fast.kernels)."""
    files = {}
    for path in sorted([*(REPO / "electra_fast").rglob("*.py"), *(REPO / "kernels").rglob("*.py")]):
        if path.is_relative_to(REPO / "electra_fast" / "kernels"):
            continue  # the link to kernels/, read below under its own path
        parts = ["electra_fast", *path.relative_to(REPO).with_suffix("").parts]
        if parts[1] == "electra_fast":
            parts = parts[1:]
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imported_names(module: str, path: Path) -> set:
    """Every module name ``module`` imports, anywhere in its file (relative imports resolved)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            names.update(f"{base}.{alias.name}" for alias in node.names)  # a submodule, or a name in base
            names.add(base)
    return names


def import_graph() -> dict:
    """Module -> the package's modules it imports (itself and the bare package left out)."""
    files = module_files()
    graph = {}
    for module, path in files.items():
        targets = set()
        for name in imported_names(module, path):
            while name and name not in files:
                name = name.rpartition(".")[0]
            if name and name not in (module, "electra_fast"):
                targets.add(name)
        graph[module] = targets
    return graph


def cycles(graph: dict) -> list:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_kernels_import_nothing_from_electra_fast():
    graph = import_graph()
    kernel_modules = [module for module in graph if module.startswith("electra_fast.kernels.")]
    assert "electra_fast.kernels.constants" in kernel_modules and len(kernel_modules) >= 7
    outside = {module: sorted(t for t in graph[module] if not t.startswith("electra_fast.kernels."))
               for module in kernel_modules}
    assert not any(outside.values()), outside


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_scan_sees_imports_inside_functions_and_cycles():
    graph = import_graph()
    assert "electra_fast.run_config" in graph["electra_fast.cli"]  # imported inside add_pretrain_command
    assert "electra_fast.kernels.registry" in graph["electra_fast.kernels.rtd_loss"]  # a relative import
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


if __name__ == "__main__":
    graph = import_graph()
    found = cycles(graph)
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} import edges, {len(found)} cycles")
    for group in found:
        print("cycle:", ", ".join(group))
        for module in group:
            print("   ", module, "->", ", ".join(sorted(graph[module] & set(group))))
