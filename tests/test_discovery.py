"""`status` and `table` find an experiment's runs from the run folders, however the sweep was launched."""
import json
import textwrap

import pytest
from helpers import REPO

from ibnnet.cli import main
from ibnnet.experiments.grid import load_experiment


@pytest.fixture
def experiment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IBNNET_RUNS", str(tmp_path / "runs"))
    path = tmp_path / "disc.yaml"
    path.write_text(textwrap.dedent(f"""
        experiment: disc
        base: {REPO / "configs" / "demo.yaml"}
        grid:
          model:
            key: model.name
            values: {{BN: resnet18_bn, IBN-a: resnet18_ibn_a}}
        table: {{rows: model, columns: eval, metrics: [top1_err]}}
    """))
    return path


def finish(path, overrides, errors):
    """Run folders as a sweep with ``overrides`` leaves them: config.yaml, then metrics.json per cell."""
    out = {}
    for cell, cfg, folder in load_experiment(path).folders(tuple(overrides)):
        folder.write_config(cfg)
        err = errors[cell.labels["model"]]
        folder.metrics_path.write_text(json.dumps({"metrics": {"in-domain": {"top1_err": err},   # the demo's sets
                                                               "cross-domain": {"top1_err": err + 30}}}))
        out[cell.labels["model"]] = folder.path.name
    return out


def cli(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_runs_launched_with_other_settings_are_found_and_variants_selected(experiment, tmp_path, capsys):
    plain = {cell.labels["model"]: folder.path.name for cell, _, folder in load_experiment(experiment).folders()}
    seed1 = finish(experiment, ["trainer.seed=1"], {"BN": 40.0, "IBN-a": 20.0})
    assert set(seed1.values()).isdisjoint(plain.values())          # other run ids than a plain command computes

    code, out, _ = cli(capsys, "status", experiment)
    assert code == 0 and "2 done" in out and "pending" not in out
    assert seed1["BN"] in out and seed1["IBN-a"] in out and "variant" not in out
    code, out, _ = cli(capsys, "table", experiment)
    assert code == 0 and "| BN | 40.00 |" in out and "| IBN-a | 20.00 |" in out

    # a second variant of BN (another seed): shown side by side with what differs; the table asks to choose
    seed2 = finish(experiment, ["trainer.seed=2"], {"BN": 44.0, "IBN-a": 22.0})
    code, out, _ = cli(capsys, "status", experiment)
    assert code == 0 and "4 done" in out and "2 cell(s) have several runs" in out
    bn = "\n".join(out.split("model=BN", 1)[1].splitlines()[:2])   # the cell's line and its second variant
    assert f"{seed1['BN']}  [variant" in bn and f"{seed2['BN']}  [variant" in bn
    assert "trainer.seed=1] in-domain: top1_err 40.00" in bn and "trainer.seed=2] in-domain: top1_err 44.00" in bn
    code, _, err = cli(capsys, "table", experiment)
    assert code == 2 and "several runs" in err and "--where" in err and len(err.strip().splitlines()) == 1
    code, out, _ = cli(capsys, "table", experiment, "--where", "trainer.seed=2")
    assert code == 0 and "| BN | 44.00 |" in out and "| IBN-a | 22.00 |" in out
    code, out, _ = cli(capsys, "status", experiment, "--where", "trainer.seed=1")
    assert seed1["BN"] in out and seed2["BN"] not in out and "variant" not in out

    # explicit overrides name exactly one folder, as the sweep with those overrides would
    code, out, _ = cli(capsys, "status", experiment, "trainer.seed=2")
    assert seed2["BN"] in out and seed1["BN"] not in out
    # a cell nobody ran under --where is reported, not silently dropped
    code, out, _ = cli(capsys, "status", experiment, "--where", "trainer.seed=3")
    assert out.count("no run matches --where") == 2


def test_other_scales_and_experiments_are_not_mixed_in(experiment, tmp_path, capsys):
    finish(experiment, [], {"BN": 40.0, "IBN-a": 20.0})
    # a folder of another experiment under the same root, claiming the same cell name
    other = tmp_path / "runs" / "disc" / "stray"
    other.mkdir()
    (other / "config.yaml").write_text("experiment: other\nscale: ''\nrun_name: model=BN\n")
    code, out, _ = cli(capsys, "status", experiment)
    assert code == 0 and "stray" not in out and "variant" not in out and "2 done" in out
