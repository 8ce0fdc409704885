"""Configs, grids, run ids, metrics and tables (no training here; see test_training.py)."""
import json
import textwrap
from pathlib import Path

import pytest
import torch

from ibnnet.config import ConfigError, compose
from ibnnet.experiments.grid import load_experiment
from ibnnet.results.table import write_table
from ibnnet.runs.folder import config_hash, run_id
from ibnnet.tasks.common import build_model
from ibnnet.tasks.metrics import ConfusionMatrix, segmentation_scores
from ibnnet.tasks.optim import build_optimizer, param_groups

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


# ---------------------------------------------------------------------------------------- configs

def test_demo_config_composes_from_parts():
    cfg = compose(DEMO)
    assert cfg.task == "classification" and cfg.model.name == "resnet18_ibn_a"
    assert [v.name for v in cfg.data.val] == ["in-domain", "cross-domain"]   # the demo names them by their role
    assert cfg.optim.schedule == "cosine" and cfg.trainer.accelerator == "cpu"
    assert cfg.data.eval_batch_size == cfg.data.batch_size  # filled default


def test_depth_and_width_overrides_and_the_fused_adamw_reach_the_run():
    cfg = compose(DEMO, ["model.layers=[2,2,2,1]", "model.channels=[32,64,128,256]"])
    model = build_model(cfg.model, num_classes=10)
    assert [len(model.layer1), len(model.layer2), len(model.layer3), len(model.layer4)] == [2, 2, 2, 1]
    assert [model.layer1[0].conv1.out_channels, model.layer4[0].conv2.out_channels] == [32, 256]
    with pytest.raises(ConfigError, match="model.channels"):
        compose(DEMO, ["model.channels=[wide]"])
    # AdamW is PyTorch's fused kernel; its first step is the AdamW update computed in float64, to float32 rounding.
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(1000))
    p.grad = torch.randn(1000)
    start, g = p.detach().double().clone(), p.grad.double()
    o = cfg.optim
    opt = build_optimizer(o, param_groups([("w", p)], o.weight_decay, False), 1e-2, 10, 100)["optimizer"]
    assert opt.defaults["fused"] is True
    opt.step()
    (b1, b2), eps = opt.defaults["betas"], opt.defaults["eps"]
    lr = 1e-2 / (o.warmup_epochs * 10)   # the warm-up's first step: (0 + 1) / (warm-up epochs * 10 steps)
    m, v = (1 - b1) * g / (1 - b1), (1 - b2) * g * g / (1 - b2)
    expected = start * (1 - lr * o.weight_decay) - lr * m / (v.sqrt() + eps)
    err = (p.detach().double() - expected).abs()
    assert (err <= 4 * torch.finfo(torch.float32).eps * (start.abs() + lr)).all(), err.max()


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    bad = write(tmp_path / "bad.yaml", """
        defaults: [{data: builtin_cls}]
        model:
          name: resnet18_bn
          in_raito: 0.25
    """)
    with pytest.raises(ConfigError) as err:
        compose(bad)
    msg = str(err.value)
    assert str(bad) in msg and "model.in_raito" in msg and "in_ratio" in msg  # did-you-mean


def test_unknown_key_on_command_line():
    with pytest.raises(ConfigError, match=r"command line: unknown key 'trainer\.max_epoch'"):
        compose(DEMO, ["trainer.max_epoch=3"])


def test_wrong_type_names_key_and_value(tmp_path):
    bad = write(tmp_path / "typed.yaml", """
        defaults: [{data: builtin_cls}]
        data: {batch_size: sixteen}
    """)
    with pytest.raises(ConfigError, match=r"typed\.yaml: bad value for 'data\.batch_size' \('sixteen'\)"):
        compose(bad)


def test_out_of_range_value_names_its_source(tmp_path):
    with pytest.raises(ConfigError, match=r"command line: model\.in_ratio=1\.5: must be a number in \[0, 1\]"):
        compose(DEMO, ["model.in_ratio=1.5"])
    part = write(tmp_path / "configs" / "optim" / "broken.yaml", "lr: -0.1\n")
    cfg = write(tmp_path / "run.yaml", "defaults: [{optim: broken}, {data: builtin_cls}]\n")
    with pytest.raises(ConfigError) as err:
        compose(cfg)
    assert f"{part}: optim.lr=-0.1: must be > 0" in str(err.value)


def test_choice_errors_suggest_the_right_value():
    with pytest.raises(ConfigError, match=r"model\.name='resnet50_ibn_x': must be one of .*did you mean"):
        compose(DEMO, ["model.name=resnet50_ibn_x"])
    with pytest.raises(ConfigError, match=r"optim\.schedule='cosin'.*did you mean 'cosine'"):
        compose(DEMO, ["optim.schedule=cosin"])


def test_missing_files_and_parts(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such config file"):
        compose(tmp_path / "nope.yaml")
    cfg = write(tmp_path / "x.yaml", "defaults: [{data: imagenett}]\n")
    with pytest.raises(ConfigError, match=r"no config part data/imagenett\.yaml; did you mean imagenet"):
        compose(cfg)
    with pytest.raises(ConfigError, match="overrides must look like key=value"):
        compose(DEMO, ["trainer.max_epochs"])


# ------------------------------------------------------------------------------------ grids & ids

def experiment(tmp_path, body: str) -> Path:
    return write(tmp_path / "experiments" / "exp.yaml", f"base: {DEMO}\n" + textwrap.dedent(body))


def test_grid_expansion_counts_cases_exclude_patches(tmp_path):
    path = experiment(tmp_path, """
        grid:
          model:
            BN: {model.name: resnet18_bn}
            IBN-a: {model.name: resnet18_ibn_a}
          model.in_ratio: [0.25, 0.5, 0.75]
        cases:
          - {labels: {model: IBN-b, model.in_ratio: "-"}, set: {model.name: resnet18_ibn_b}}
        exclude: [{model: BN, model.in_ratio: "0.75"}]
        patches: [{match: {model: IBN-a}, set: {optim.warmup_epochs: 2}}]
        table: {rows: model, columns: model.in_ratio}
    """)
    exp = load_experiment(path)
    names = [c.name for c in exp.cells]
    assert len(names) == 2 * 3 - 1 + 1 and "model=BN_model.in_ratio=0.75" not in names
    cfgs = dict((c.name, cfg) for c, cfg in exp.configs())
    assert cfgs["model=IBN-a_model.in_ratio=0.25"].optim.warmup_epochs == 2
    assert cfgs["model=BN_model.in_ratio=0.5"].optim.warmup_epochs == compose(DEMO).optim.warmup_epochs
    assert cfgs["model=IBN-a_model.in_ratio=0.75"].model.in_ratio == 0.75
    assert cfgs["model=IBN-b_model.in_ratio=-"].model.name == "resnet18_ibn_b"
    assert dict(cfgs["model=BN_model.in_ratio=0.25"].grid) == {"model": "BN", "model.in_ratio": "0.25"}


def test_run_ids_are_stable_and_ignore_irrelevant_settings(tmp_path):
    path = experiment(tmp_path, "grid: {model.in_ratio: [0.25, 0.5]}\n")
    ids = [run_id(cfg) for _, cfg in load_experiment(path).configs()]
    assert ids == [run_id(cfg) for _, cfg in load_experiment(path).configs()]  # same expansion, same ids
    assert len(set(ids)) == 2 and ids[0].startswith("model.in_ratio=0.25-")
    moved = [run_id(cfg) for _, cfg in load_experiment(path).configs(
        ("data.num_workers=7", "paths.runs=/elsewhere", "logger.wandb.mode=disabled", "data.train.root=/x"))]
    assert moved == ids
    changed = [run_id(cfg) for _, cfg in load_experiment(path).configs(("optim.lr=0.02",))]
    assert set(changed).isdisjoint(ids)
    cfg = compose(DEMO)
    assert config_hash(cfg) == config_hash(compose(DEMO, ["trainer.enable_progress_bar=false"]))


def test_experiment_file_errors_name_file_and_key(tmp_path):
    bad = experiment(tmp_path, "grid: {model.in_raito: [0.25]}\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml \(cell model\.in_raito=0\.25\): unknown key 'model\.in_raito'"):
        load_experiment(bad).configs()
    bad = experiment(tmp_path, "grids: {}\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml: unknown top-level keys \['grids'\]"):
        load_experiment(bad)
    bad = experiment(tmp_path, "grid: {variant: [a, b]}\n")
    with pytest.raises(ConfigError, match=r"grid\.variant: a list of values needs the config key"):
        load_experiment(bad)
    bad = experiment(tmp_path, "grid: {model.in_ratio: [0.5]}\ntable: {rows: ratio}\n")
    with pytest.raises(ConfigError, match=r"table\.rows='ratio' is neither a grid axis"):
        load_experiment(bad)


def test_every_shipped_experiment_expands_and_validates():
    for path in sorted((REPO / "experiments").glob("*.yaml")):
        raw = path.read_text()
        if "analysis:" in raw.splitlines()[0]:
            continue
        exp = load_experiment(path)
        for scale in exp.scales or [None]:
            configs = load_experiment(path, scale).configs()
            assert configs, path


# ---------------------------------------------------------------------------------------- metrics

def test_confusion_matrix_metrics_on_hand_made_predictions():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 1]])
    m = ConfusionMatrix(num_classes=3, ignore_index=255)
    m.update(pred[:1], target[:1])
    m.update(pred[1:], target[1:])
    scores = m.compute()
    # class 0: tp 1, fp 1 (a 2 predicted 0), fn 1 -> 1/3; class 1: tp 3, fp 1, fn 0 -> 3/4; class 2: 1/2
    torch.testing.assert_close(scores["iou"], 100 * torch.tensor([1 / 3, 3 / 4, 1 / 2], dtype=torch.float64))
    assert abs(float(scores["miou"]) - 100 * (1 / 3 + 3 / 4 + 1 / 2) / 3) < 1e-9
    assert abs(float(scores["pixel_acc"]) - 100 * 5 / 7) < 1e-9  # the ignored pixel is not counted
    assert scores["confmat"].tolist() == [[1, 1, 0], [0, 3, 0], [1, 0, 1]]
    with pytest.raises(ValueError, match="outside"):
        m.update(torch.tensor([0]), torch.tensor([7]))


def test_absent_classes_do_not_count_in_miou():
    cm = torch.tensor([[5, 0, 0], [0, 0, 0], [0, 0, 5]])
    assert float(segmentation_scores(cm)["miou"]) == 100.0


def test_deterministic_mode_counts_without_one_hot():
    m = ConfusionMatrix(num_classes=19)
    target = torch.randint(0, 19, (2, 64, 64))
    pred = torch.randint(0, 19, (2, 64, 64))
    torch.use_deterministic_algorithms(True)
    try:
        m.update(pred, target)
    finally:
        torch.use_deterministic_algorithms(False)
    expected = torch.zeros(19, 19, dtype=torch.long)
    for t, p in zip(target.flatten().tolist(), pred.flatten().tolist()):
        expected[t, p] += 1
    assert torch.equal(m.compute()["confmat"], expected)


# ----------------------------------------------------------------------------------------- tables

def test_table_from_run_folders_with_paper_numbers(tmp_path):
    path = experiment(tmp_path, """
        experiment: tabletest
        title: Table test
        grid:
          model:
            key: model.name
            values: {BN: resnet18_bn, IBN-a: resnet18_ibn_a}
        table: {rows: model, columns: eval, metrics: [top1_err, top5_err], eval_labels: {cross-domain: cross}}
        paper:
          - {model: BN, eval: in-domain, top1_err: 24.27, top5_err: 7.08}
          - {model: IBN-a, eval: cross-domain, top1_err: 22.54, top5_err: 6.32}
    """)
    exp = load_experiment(path)
    overrides = (f"paths.runs={tmp_path / 'runs'}",)
    triples = exp.folders(overrides)
    cell, cfg, folder = triples[0]  # BN done; IBN-a still pending
    folder.write_config(cfg)
    folder.metrics_path.write_text(json.dumps({"metrics": {
        "in-domain": {"top1_err": 25.0, "top5_err": 7.0}, "cross-domain": {"top1_err": 60.5, "top5_err": 30.25}}}))
    paths = write_table(exp, tmp_path / "results", overrides)
    md = paths["markdown"].read_text()
    assert "# Table test" in md
    assert "| BN | 25.00/7.00 | 24.27/7.08 | +0.73/-0.08 | 60.50/30.25 | – |  |" in md
    assert "| IBN-a | (pending) | – |  | (pending) | 22.54/6.32 |  |" in md
    assert "cross ours" in md
    rows = paths["csv"].read_text().splitlines()
    assert rows[0].startswith("model,eval,metric,ours,paper,delta,status,run_id")
    assert "BN,in-domain,top1_err,25.0000,24.2700,0.7300,done," in paths["csv"].read_text()
    assert paths["plot"].stat().st_size > 1000
    assert paths["markdown"].parent == tmp_path / "results" / "tabletest"


def test_wandb_failure_never_stops_training(tmp_path):
    from ibnnet.runs.loggers import FailSafeWandbLogger, wandb_mode

    class Broken(FailSafeWandbLogger):
        def log_metrics(self, metrics, step=None):
            raise OSError("disk full")

    logger = Broken(project="x", save_dir=str(tmp_path), mode="disabled")
    logger.log_metrics({"a": 1.0})  # swallowed, reported once
    assert logger._broken
    cfg = compose(DEMO, ["logger.wandb.mode=auto"])
    import os
    old = {k: os.environ.pop(k, None) for k in ("WANDB_API_KEY", "WANDB_MODE")}
    try:
        os.environ["NETRC"] = str(tmp_path / "no-netrc")
        assert wandb_mode(cfg.logger.wandb) == "offline"
        os.environ["WANDB_API_KEY"] = "x" * 40
        assert wandb_mode(cfg.logger.wandb) == "online"
        assert wandb_mode(compose(DEMO, ["logger.wandb.mode=disabled"]).logger.wandb) == "disabled"
    finally:
        os.environ.pop("WANDB_API_KEY", None)
        os.environ.pop("NETRC", None)
        for k, v in old.items():
            if v is not None:
                os.environ[k] = v


def test_a_whole_part_can_be_chosen_on_the_command_line():
    cfg = compose(DEMO, ["launcher=slurm", "trainer=gpu_fast", "trainer.max_epochs=3", "trainer.devices=8"])
    from ibnnet.launchers.slurm import gpus_per_node
    assert cfg.launcher.name == "slurm" and gpus_per_node(cfg) == 8   # one GPU per process, derived
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.max_epochs == 3
    with pytest.raises(ConfigError, match=r"no config part launcher/slurmm\.yaml; did you mean slurm"):
        compose(DEMO, ["launcher=slurmm"])


def test_tables_under_other_settings_go_beside_the_plain_one(tmp_path):
    """A table made under result-changing overrides (or --where) says so and leaves the plain table alone; a
    scale whose protocol is not the paper's shows the paper's numbers without a Δ; --where keys are checked."""
    path = experiment(tmp_path, """
        experiment: vartest
        title: Variants
        scales:
          full: {gpu_hours: 10}
          reduced: {gpu_hours: 1, overrides: {data.augment.image_size: 24}}
        grid: {model: {key: model.name, values: {BN: resnet18_bn}}}
        table: {rows: model, columns: eval, metrics: [top1_err, top5_err]}
        paper:
          - {model: BN, eval: in-domain, top1_err: 24.27, top5_err: 7.08}
    """)
    where_runs = (f"paths.runs={tmp_path / 'runs'}",)

    def finish(scale, extra=()):
        (_, cfg, folder), = load_experiment(path, scale).folders(where_runs + extra)
        folder.write_config(cfg)
        folder.metrics_path.write_text(json.dumps({"metrics": {"in-domain": {"top1_err": 25.0, "top5_err": 7.0},
                                                               "cross-domain": {"top1_err": 50.0, "top5_err": 20.0}}}))
    finish("full")
    full = write_table(load_experiment(path, "full"), tmp_path / "results", where_runs)
    assert full["markdown"] == tmp_path / "results" / "vartest" / "full" / "table.md"
    assert "| BN | 25.00/7.00 | 24.27/7.08 | +0.73/-0.08 |" in full["markdown"].read_text()
    plain = full["markdown"].read_text()
    # the table and its plot are in the experiment's wandb results run, in the sweep's group, offline
    from wandb_files import read_run
    logged = read_run(full["wandb"])
    assert logged["run"].run_group == "vartest" and logged["run"].job_type == "results"
    assert full["wandb"].parent == full["markdown"].parent / "wandb"
    (step,) = logged["history"]
    table = json.loads((full["wandb"] / "files" / step["table/path"]).read_text())
    csv_rows = [r.split(",") for r in full["csv"].read_text().splitlines()]
    assert table["columns"] == csv_rows[0] and len(table["data"]) == len(csv_rows) - 1
    assert ["BN", "in-domain", "top1_err", 25.0, 24.27, 0.73, "done"] == table["data"][0][:7]
    assert (full["wandb"] / "files" / step["plot/path"]).stat().st_size > 1000
    finish("full", ("trainer.max_epochs=1",))
    tried = write_table(load_experiment(path, "full"), tmp_path / "results", where_runs + ("trainer.max_epochs=1",))
    assert tried["markdown"].parent.parent == full["markdown"].parent / "variants"
    assert full["markdown"].read_text() == plain                         # the plain table is untouched
    text = tried["markdown"].read_text()
    assert "Made under `trainer.max_epochs=1`" in text and "Δ" not in text.split("\n\n", 2)[2]
    assert "| BN | 25.00/7.00 | 24.27/7.08 |" in text and "+0.73" not in text
    finish("reduced")
    reduced = write_table(load_experiment(path, "reduced"), tmp_path / "results", where_runs)
    text = reduced["markdown"].read_text()
    assert reduced["markdown"] == tmp_path / "results" / "vartest" / "reduced" / "table.md"
    assert "for reference only" in text and "+0.73" not in text and "| BN | 25.00/7.00 | 24.27/7.08 |" in text
    assert ",0.7300," not in reduced["csv"].read_text()
    with pytest.raises(ConfigError, match=r"--where trainer.max_epoch=5: no config key 'trainer.max_epoch'; "
                                          r"did you mean trainer.max_epochs\?"):
        write_table(load_experiment(path, "full"), tmp_path / "results", where_runs, ["trainer.max_epoch=5"])

def test_no_plot_without_results_and_a_title_saying_what_is_drawn(tmp_path):
    path = experiment(tmp_path, """
        experiment: plottest
        title: "Plot test: several metrics (top-1/top-5 error %)"
        grid: {model: {key: model.name, values: {BN: resnet18_bn}}}
        table: {rows: model, columns: eval, metrics: [top1_err, top5_err]}
    """)
    overrides = (f"paths.runs={tmp_path / 'runs'}", "logger=disabled")
    exp = load_experiment(path)
    paths = write_table(exp, tmp_path / "results", overrides)
    assert "plot" not in paths and not (tmp_path / "results" / "plottest" / "plot.png").exists()
    assert "(pending)" in paths["markdown"].read_text()
    from ibnnet.results.table import build_table, collect, plot_title
    assert plot_title(exp, build_table(exp, collect(exp, overrides))) == "Plot test: top-1 err (%) per model"
