"""The packages depend one way (docs/architecture.md): a module imports only from packages below its own."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "ibnnet"

# Lowest first. A package may import from packages of a lower rank, never from its own rank or above.
RANKS = {
    "errors": 0, "files": 0, "progress": 0,
    "layers": 1,
    "models": 2, "data": 2,
    "config": 3,
    "tasks": 4,
    "runs": 5,
    "experiments": 6,
    "launchers": 7,
    "analysis": 8, "results": 8,
    "commands": 9,
    "cli": 10,
    "__main__": 11,
}
PACKAGE_INIT_MAY_IMPORT = {"layers", "models"}   # `import ibnnet` registers the models in timm, nothing more


def imported_packages(path: Path, root: Path = ROOT) -> set[str]:
    """Top-level ibnnet packages/modules that ``path`` imports (module level and inside functions)."""
    package = list(path.relative_to(root.parent).parts[:-1])   # a module's package, or an __init__'s own
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                mod = base + (node.module.split(".") if node.module else [])
                targets = [mod] if node.module else [mod + [a.name] for a in node.names]
            elif node.module:
                targets = [node.module.split(".")]
        elif isinstance(node, ast.Import):
            targets = [a.name.split(".") for a in node.names]
        # a name the package's __init__ defines (``from . import __version__``) is not a package
        found |= {t[1] for t in targets if len(t) > 1 and t[0] == "ibnnet"
                  and ((root / t[1]).is_dir() or (root / f"{t[1]}.py").is_file())}
    return found


def owner(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.name != "__init__.py" else "__init__"


def test_every_package_has_a_rank():
    names = {p.name.removesuffix(".py") for p in ROOT.iterdir()
             if (p.is_dir() and (p / "__init__.py").is_file()) or (p.suffix == ".py" and p.name != "__init__.py")}
    assert names == set(RANKS), f"place new packages in RANKS and docs/architecture.md: {names ^ set(RANKS)}"


def test_dependencies_point_one_way():
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        src = owner(path)
        for dst in imported_packages(path) - {src}:
            if src == "__init__":
                ok = dst in PACKAGE_INIT_MAY_IMPORT
            else:
                ok = RANKS[dst] < RANKS[src]
            if not ok:
                wrong.append(f"{path.relative_to(ROOT.parent)} ({src}) imports {dst}")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_check_sees_upward_imports(tmp_path):
    """The parser resolves relative imports, also inside functions: upward ones in tasks/ would be reported."""
    probe = tmp_path / "ibnnet" / "tasks" / "probe.py"
    probe.parent.mkdir(parents=True)
    for package in ("runs", "commands", "launchers"):   # what the probe imports exists, as in the real tree
        (probe.parents[1] / package).mkdir()
    probe.write_text("from ..runs.folder import RunFolder\nfrom . import base\n\ndef f():\n"
                     "    from .. import commands\n    import ibnnet.launchers.slurm\n")
    assert imported_packages(probe, tmp_path / "ibnnet") == {"runs", "tasks", "commands", "launchers"}


def module_imports(path: Path, root: Path = ROOT) -> set[str]:
    """Dotted ibnnet modules that ``path`` imports by name (``from .x import y`` counts as ``x.y`` when that
    is a module), module level and inside functions, including those under TYPE_CHECKING."""
    package = list(path.relative_to(root.parent).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        mods = []
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - (node.level - 1)] if node.level else []
            mod = base + (node.module.split(".") if node.module else [])
            mods = [mod + [a.name] for a in node.names] + [mod]
        elif isinstance(node, ast.Import):
            mods = [a.name.split(".") for a in node.names]
        for m in mods:
            if m and m[0] == "ibnnet":
                as_file = root.parent.joinpath(*m)
                if as_file.with_suffix(".py").is_file() or (as_file / "__init__.py").is_file():
                    found.add(".".join(m))
    return found


def test_no_module_imports_itself_through_a_circle():
    """Import circles between modules (data/imagenet <-> data/shrink was one) make the order of imports matter
    and hide which module owns what; every module-level dependency graph here is acyclic."""
    graph = {}
    for path in ROOT.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = {m for m in module_imports(path) if m != name and not name.startswith(m + ".")}
    state, circles = {}, []

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(nxt_ := node, ())):
            if nxt.startswith(nxt_ + "."):
                continue   # a package importing its own submodule
            if state.get(nxt) == 1:
                circles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_data_holds_datasets_transforms_and_tools_apart():
    data = ROOT / "data"
    assert {p.stem for p in (data / "tools").glob("*.py")} >= {"check", "shrink", "stylize", "corruptions"}
    readers = {p.stem for p in (data / "datasets").glob("*.py")} - {"__init__"}
    assert {"imagenet", "cityscapes", "gta5", "synthia", "mapillary", "bdd100k"} <= readers
    for reader in (data / "datasets").glob("*.py"):   # a reader never depends on a tool that writes datasets
        assert not any(".data.tools" in m for m in module_imports(reader)), reader
