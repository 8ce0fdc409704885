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
        found |= {t[1] for t in targets if len(t) > 1 and t[0] == "ibnnet"}
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
    probe.write_text("from ..runs.folder import RunFolder\nfrom . import base\n\ndef f():\n"
                     "    from .. import commands\n    import ibnnet.launchers.slurm\n")
    assert imported_packages(probe, tmp_path / "ibnnet") == {"runs", "tasks", "commands", "launchers"}
