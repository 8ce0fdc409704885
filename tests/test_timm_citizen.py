"""ibnnet as a good timm citizen: public timm API only, timm's own models untouched by ``import ibnnet``."""
import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted((REPO / "ibnnet").rglob("*.py")) + [REPO / "hubconf.py"]
# A private timm module or name reached through a dotted path: timm.models._registry, timm.layers._fx ...
PRIVATE_PATH = re.compile(r"\btimm(?:\.\w+)*\._[a-z]\w*")


def _private_timm_imports(path: Path, root: Path = REPO) -> list[str]:
    text, name = path.read_text(), path.relative_to(root)
    found = [f"{name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
             for m in PRIVATE_PATH.finditer(text)]
    # ``from timm.models import _model_default_cfgs`` has no dotted private path; the syntax tree shows it.
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "timm":
            found += [f"{name}:{node.lineno}: from {node.module} import {a.name}"
                      for a in node.names if a.name.startswith("_")]
    return found


def test_the_check_finds_private_imports(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from timm.models._registry import is_model\nimport timm.models._manipulate as m\n"
                   "from timm.models import (\n    build_model_with_cfg,\n    _model_default_cfgs,\n)\n"
                   "x = timm.layers._fx.register_notrace_module\n")
    found = _private_timm_imports(bad, root=tmp_path)
    assert len(found) == 4, found


def test_ibnnet_uses_only_public_timm_api():
    assert len(SOURCES) > 50
    found = [hit for path in SOURCES for hit in _private_timm_imports(path)]
    assert not found, "private timm API in use:\n" + "\n".join(found)
