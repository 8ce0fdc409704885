"""A run's checkpoint is read back into the model the run trained: evaluate gives metrics.json's numbers exactly,
the default checkpoint is the one the experiment's table reports, and a file that is not a checkpoint (or one of
another model) is a one-line error naming the file and the keys."""
import contextlib
import io
import json
import pickle
import random
import zipfile

import pytest
import torch
from helpers import TINY, cli, config, ibnnet

from ibnnet.config import compose
from ibnnet.runs.folder import RunFolder, run_dir

# TINY with enough validation images that a classifier left at its random initialisation cannot hit the trained
# numbers by chance, and three epochs so that the best epoch and the last one can differ.
BODY = (TINY.replace("num_samples: 8}", "num_samples: 40}")
        .replace("max_epochs: 2", "max_epochs: 3"))


def run_cli(*args) -> tuple[int, str, str]:
    """``ibnnet ARGS`` in this process: exit code, stdout, stderr."""
    from ibnnet.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished tiny run (10 classes, not ImageNet's 1000), trained in its own process as a user would."""
    tmp = tmp_path_factory.mktemp("run")
    path = config(tmp, BODY)
    ibnnet("train", path)
    folder = RunFolder(run_dir(compose(path)))
    assert folder.is_done()
    return tmp, folder


def evaluation(folder: RunFolder, out, *extra) -> tuple[dict, str]:
    code, stdout, stderr = run_cli("evaluate", folder.config_path, "--appearance", "none", "--out", out, *extra)
    assert code == 0, stdout + stderr
    return json.loads((out / "evaluation.json").read_text())["results"], stderr


def test_evaluate_gives_back_the_runs_own_numbers_exactly(trained):
    tmp, folder = trained
    metrics = folder.metrics()
    assert compose(folder.config_path).data.val[0].name == "synthetic"
    assert metrics["best"]["metrics"] != metrics["metrics"]   # the best epoch is not the last: two models to tell apart
    final, _ = evaluation(folder, tmp / "eval_last", "--checkpoint", folder.checkpoint_dir / "last.ckpt")
    assert final == metrics["metrics"]     # equality, every metric of every set: the model the run trained
    best, _ = evaluation(folder, tmp / "eval_best", "--checkpoint", folder.checkpoint_dir / "best.ckpt")
    assert best == metrics["best"]["metrics"]


def test_evaluate_gives_back_batch_average_numbers_of_an_sn_run(tmp_path):
    """SN's final numbers use batch-average statistics (trainer.batch_average_batches): evaluate estimates them
    from the same training batches and reports both modes as the run did."""
    path = config(tmp_path, BODY)
    overrides = ["model.norm=sn", "trainer.batch_average_batches=2", "trainer.max_epochs=1"]
    ibnnet("train", path, *overrides)
    folder = RunFolder(run_dir(compose(path, overrides)))
    metrics = folder.metrics()
    assert metrics["inference"] == "batch_average" and metrics["metrics"] != metrics["metrics_moving_average"]
    results, _ = evaluation(folder, tmp_path / "eval")
    assert results == metrics["metrics"]
    written = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert written["inference"] == "batch_average"
    assert written["metrics_moving_average"] == metrics["metrics_moving_average"]


def test_without_checkpoint_evaluate_loads_the_one_the_table_reports(trained, tmp_path, monkeypatch):
    _, folder = trained
    metrics = folder.metrics()
    # `ibnnet train`: no experiment file, its numbers are the final ones
    results, stderr = evaluation(folder, tmp_path / "final")
    assert results == metrics["metrics"]
    assert f"{folder.checkpoint_dir / 'last.ckpt'}" in stderr and "final" in stderr
    # the same run as a cell of an experiment whose table reports the best validation epoch
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    (experiments / "picks_best.yaml").write_text(
        f"base: {folder.config_path}\ntable: {{rows: eval, metrics: [top1_err], select: best}}\n")
    monkeypatch.setenv("IBNNET_EXPERIMENT_PATH", str(experiments))
    results, stderr = evaluation(folder, tmp_path / "best", "experiment=picks_best")
    assert results == metrics["best"]["metrics"]
    assert f"{folder.checkpoint_dir / 'best.ckpt'}" in stderr and f"epoch {metrics['best']['epoch']}" in stderr


@pytest.mark.parametrize("override", ["data.num_classes=7", "model.name=resnet18_ibn_a"],
                         ids=["class count", "architecture"])
def test_a_checkpoint_of_another_model_is_an_error_naming_the_keys(trained, tmp_path, override):
    _, folder = trained
    ckpt = folder.checkpoint_dir / "last.ckpt"
    code, _, err = run_cli("evaluate", folder.config_path, "--checkpoint", ckpt, "--appearance", "none",
                           "--out", tmp_path, override)
    assert code == 2, err
    line = err.strip()
    assert len(line.splitlines()) == 1 and str(ckpt) in line, line
    if override.startswith("data"):
        assert "model.fc.weight (10, 512) vs (7, 512)" in line, line
    else:
        assert "missing" in line and ".IN.weight" in line, line


def not_checkpoints(tmp_path, real) -> dict:
    """Files a user might pass as a checkpoint by mistake, each with what the error must say."""
    random_bytes = tmp_path / "random.ckpt"
    random_bytes.write_bytes(random.Random(0).randbytes(4096))
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.ckpt"
    data = real.read_bytes()
    truncated.write_bytes(data[:len(data) // 2])
    foreign = tmp_path / "foreign.ckpt"   # a real torch.save file, holding an object a safe load refuses
    torch.save({"state_dict": {"w": torch.zeros(2)}, "info": zipfile.ZipInfo("x")}, foreign)
    pickled = tmp_path / "pickled.pkl"    # a plain pickle of such an object
    pickled.write_bytes(pickle.dumps({"info": zipfile.ZipInfo("x")}, protocol=2))
    return {random_bytes: "not a checkpoint", empty: "not a checkpoint (empty file)",
            truncated: "truncated or damaged", foreign: "zipfile.ZipInfo", pickled: "zipfile.ZipInfo"}


def test_a_file_that_is_not_a_checkpoint_is_one_line_saying_so(trained, tmp_path):
    from ibnnet.models import load_weights
    from ibnnet.models.weights import WeightsError
    from ibnnet.runs.folder import checkpoint_problem
    _, folder = trained
    for path, says in not_checkpoints(tmp_path, folder.checkpoint_dir / "last.ckpt").items():
        code, _, err = run_cli("evaluate", folder.config_path, "--checkpoint", path, "--appearance", "none",
                               "--out", tmp_path / "out")
        line = err.strip()
        assert code == 2 and len(line.splitlines()) == 1, err
        assert str(path) in line and says in line and "weights_only" not in line, line
        if says == "zipfile.ZipInfo":
            assert "not a checkpoint saved by ibnnet or by torch.save of tensors" in line, line
        # the same words wherever a checkpoint or weight file is read: pretrained weights, a run to resume
        with pytest.raises(WeightsError) as e:
            load_weights(torch.nn.Linear(2, 2), path, verify=False)
        assert str(path) in str(e.value) and says in str(e.value) and "weights_only" not in str(e.value)
        assert len(str(e.value).splitlines()) == 1
        problem = checkpoint_problem(path)
        assert says in problem and "weights_only" not in problem and len(problem.splitlines()) == 1, problem


def test_predict_defaults_to_the_checkpoint_the_table_reports(tmp_path, monkeypatch):
    from test_predict import CONFIG, write_fixture
    root = tmp_path / "cityscapes"
    write_fixture(root)
    path = tmp_path / "seg.yaml"
    path.write_text(CONFIG.format(root=root, tmp=tmp_path))
    overrides = ["data.batch_size=1", "trainer.max_epochs=2"]
    ibnnet("train", path, *overrides)
    folder = RunFolder(run_dir(compose(path, overrides)))
    assert folder.is_done()
    code, _, err = run_cli("predict", folder.config_path, "--out", tmp_path / "default")
    assert code == 0, err
    last = folder.checkpoint_dir / "last.ckpt"
    assert f"[ibnnet] checkpoint {last}: the final model" in err
    assert json.loads((tmp_path / "default" / "predictions.json").read_text())["checkpoint"] == str(last)
    cli("predict", folder.config_path, "--checkpoint", last, "--out", tmp_path / "explicit")
    files = sorted((tmp_path / "default" / "cityscapes").rglob("*.png"))
    assert len(files) == 2
    for f in files:
        assert f.read_bytes() == (tmp_path / "explicit" / f.relative_to(tmp_path / "default")).read_bytes()
    # an experiment whose table reports the best validation epoch (as IBN Tables 1-5 do): best.ckpt
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    (experiments / "picks_best.yaml").write_text(
        f"base: {folder.config_path}\ntable: {{rows: eval, metrics: [miou], select: best}}\n")
    monkeypatch.setenv("IBNNET_EXPERIMENT_PATH", str(experiments))
    code, _, err = run_cli("predict", folder.config_path, "--out", tmp_path / "best", "experiment=picks_best")
    assert code == 0, err
    best = folder.checkpoint_dir / "best.ckpt"
    assert f"[ibnnet] checkpoint {best}: the model of epoch {folder.metrics()['best']['epoch']}" in err
    assert json.loads((tmp_path / "best" / "predictions.json").read_text())["checkpoint"] == str(best)


def test_weights_whose_classifier_fits_keep_it(tmp_path):
    """A bare state_dict of a 10-class model into a 10-class model: the classifier is loaded, not dropped
    because the pretrained cfg assumes ImageNet's 1000 classes (what made evaluate score a random head)."""
    import timm

    from ibnnet.models import load_weights
    torch.manual_seed(0)
    trained = timm.create_model("resnet18_bn", num_classes=10)
    torch.save(trained.state_dict(), tmp_path / "ten.pth")
    model = load_weights(timm.create_model("resnet18_bn", num_classes=10), tmp_path / "ten.pth")
    assert torch.equal(model.fc.weight, trained.fc.weight) and torch.equal(model.fc.bias, trained.fc.bias)
    # another class count still starts a new classifier (fine-tuning from ImageNet weights)
    model = load_weights(timm.create_model("resnet18_bn", num_classes=7), tmp_path / "ten.pth")
    assert model.fc.weight.shape == (7, 512) and torch.equal(model.conv1.weight, trained.conv1.weight)


def test_analyze_builds_the_model_a_run_checkpoint_holds(trained):
    from ibnnet.commands.analyze import _load_models
    from ibnnet.config import ConfigError
    _, folder = trained
    ckpt = folder.checkpoint_dir / "last.ckpt"
    model = _load_models([f"BN=resnet18_bn@{ckpt}"], pretrained=False)["BN"]
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(v, saved[f"model.{k}"]) for k, v in model.state_dict().items())   # the head included
    with pytest.raises(ConfigError, match="a checkpoint of a classification run of resnet18_bn, not"):
        _load_models([f"resnet18_ibn_a@{ckpt}"], pretrained=False)
