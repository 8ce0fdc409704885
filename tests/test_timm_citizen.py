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


# Run in a fresh interpreter: timm's registry as timm alone leaves it, then again after ``import ibnnet``.
REGISTRY_PROBE = r'''
import json, sys
import timm, torch
from timm.models import get_pretrained_cfg, list_models, model_entrypoint

torch.set_num_threads(1)
PROBED = ("resnet50_gn", "resnet18", "resnet50")

def snapshot():
    names = list_models()
    entrypoints = {n: model_entrypoint(n) for n in names}
    cfgs = {n: get_pretrained_cfg(n).to_dict() for n in list_models(pretrained=True)}
    models = {}
    for name in PROBED:
        torch.manual_seed(0)
        model = timm.create_model(name, drop_path_rate=0.05)
        x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            train_out = model.train()(x)  # drop path active: the seed fixes which paths drop
            eval_out = model.eval()(x)
        models[name] = (type(model), [(k, tuple(v.shape)) for k, v in model.named_parameters()],
                        model.state_dict(), train_out, eval_out)
    return set(names), entrypoints, cfgs, models

names, entrypoints, cfgs, models = snapshot()
import ibnnet
from ibnnet.models import MODELS, NOT_REGISTERED
names2, entrypoints2, cfgs2, models2 = snapshot()

report = dict(
    timm_names=len(names),
    collisions=sorted(set(MODELS) & names),
    not_registered=NOT_REGISTERED,
    names_added=sorted(names2 - names),
    names_lost=sorted(names - names2),
    entrypoints_changed=sorted(n for n in names if entrypoints2.get(n) is not entrypoints[n]),
    pretrained_cfgs=len(cfgs),
    cfgs_changed=sorted(n for n in cfgs if cfgs2.get(n) != cfgs[n]),
    models={},
)
for name in PROBED:
    (cls, params, sd, train_out, eval_out), (cls2, params2, sd2, train_out2, eval_out2) = models[name], models2[name]
    report["models"][name] = dict(
        cls=f"{cls.__module__}.{cls.__name__}", same_cls=cls is cls2, params=len(params), same_params=params == params2,
        same_state=sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd),
        same_train_out=torch.equal(train_out, train_out2), same_eval_out=torch.equal(eval_out, eval_out2))
print("REPORT" + json.dumps(report))
'''


def test_import_ibnnet_leaves_timm_models_unchanged():
    import json
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-c", REGISTRY_PROBE], capture_output=True, text=True, timeout=600,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Overwriting" not in proc.stderr and "not registered" not in proc.stderr, proc.stderr[-3000:]
    report = json.loads(proc.stdout.split("REPORT", 1)[1])
    from ibnnet.models import MODELS
    assert report["timm_names"] > 1000 and report["pretrained_cfgs"] > 1000
    assert report["collisions"] == [] and report["not_registered"] == []
    assert report["names_added"] == sorted(MODELS) and report["names_lost"] == []
    assert report["entrypoints_changed"] == [] and report["cfgs_changed"] == []
    for name, m in report["models"].items():
        assert m["cls"] == "timm.models.resnet.ResNet", name
        assert m["params"] > 50 and all(m[k] for k in m if k.startswith("same_")), (name, m)


def test_a_timm_name_is_never_taken_over(recwarn):
    """Should a later timm add one of our names, timm keeps it; ours is reported instead of registered."""
    import sys

    import pytest
    import timm
    from timm.models import model_entrypoint, register_model

    import ibnnet.models
    from ibnnet.models import zoo

    name = "ibnnet_collision_probe"  # registered once per test session by this test only

    def theirs(pretrained=False, **kwargs):
        return timm.create_model("resnet18_bn", **kwargs)

    theirs.__name__ = name
    theirs.__module__ = __name__
    assert sys.modules[__name__]
    register_model(theirs)

    def ours(pretrained=False, **kwargs):
        raise AssertionError("must not be reachable through timm")

    ours.__name__ = name
    ours.__module__ = zoo.__name__
    with pytest.warns(RuntimeWarning, match="timm already has a model named 'ibnnet_collision_probe'"):
        assert zoo._register(ours) is False
    assert model_entrypoint(name) is theirs
    # our own names re-register silently (e.g. importlib.reload of the zoo)
    assert zoo._register(getattr(zoo, "resnet18_bn")) is True
    assert not [w for w in recwarn if "Overwriting" in str(w.message)]
    # ibnnet.models.create_model refuses a name that timm took
    zoo.MODELS[name] = ("resnet18", "bn")
    zoo.NOT_REGISTERED.append(name)
    try:
        with pytest.raises(RuntimeError, match="has a model of that name"):
            ibnnet.models.create_model(name)
        assert name not in ibnnet.models.list_models()
    finally:
        del zoo.MODELS[name]
        zoo.NOT_REGISTERED.remove(name)
