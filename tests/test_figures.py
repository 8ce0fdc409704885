"""The papers' figures: SN importance weights (Fig. 4, Fig. 7), learning curves (Fig. 5/6), IBN Fig. 5 numbering."""
import csv
import math
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

import ibnnet.models  # noqa: F401  (registers the models with timm)
from ibnnet.analysis.divergence import paper_numbering
from ibnnet.analysis.sn_weights import network_average, sn_layers

try:
    from helpers import REPO, cli
except ImportError:  # pragma: no cover
    from tests.helpers import REPO, cli


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_resnet50_sn_layers_grouped_as_in_fig7():
    model = timm.create_model("resnet50_sn")  # CPU, no forward: cheap
    with torch.no_grad():
        model.layer1[0].bn2.mean_weight.copy_(torch.tensor([0.0, 1.0, 2.0]))
    layers = sn_layers({f"model.{k}": v for k, v in model.state_dict().items()})  # Lightning's prefix
    assert len(layers) == 53
    kinds = [layer.kind for layer in layers]
    assert kinds.count("3x3 conv") == 16 and kinds.count("1x1 conv") == 32 and kinds.count("shortcut") == 4
    assert layers[0].name == "bn1" and layers[0].kind == "7x7 conv" and layers[0].stage == "res1"
    per_stage = {s: sum(layer.stage == s for layer in layers) for s in ("res2", "res3", "res4", "res5")}
    assert per_stage == {"res2": 10, "res3": 13, "res4": 19, "res5": 10}
    l = next(x for x in layers if x.name == "layer1.0.bn2")
    e = [math.exp(v) for v in (0.0, 1.0, 2.0)]
    assert l.kind == "3x3 conv" and l.mean == pytest.approx(tuple(v / sum(e) for v in e))
    assert l.var == pytest.approx((1 / 3,) * 3)
    assert next(x for x in layers if x.name == "layer3.0.downsample.1").stage == "res4"
    avg = network_average(layers)
    assert avg["mean"][2] == pytest.approx((e[2] / sum(e) + 52 / 3) / 53)


def _finished_run(folder: Path, state: dict, log_rows: list[dict] | None = None) -> None:
    (folder / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3},
               folder / "checkpoints" / "last.ckpt")
    (folder / "metrics.json").write_text("{}")
    if log_rows is not None:
        (folder / "logs").mkdir()
        cols = ["epoch", "epoch_float", "step", "train/loss_epoch", "train/top1_acc", "val/val/top1_acc"]
        with open(folder / "logs" / "metrics.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(log_rows)


def _experiment(tmp_path: Path) -> Path:
    path = tmp_path / "sn_fig.yaml"
    path.write_text(f"""
experiment: sn_fig
title: "SN Fig: test"
base: {REPO / 'configs' / 'demo.yaml'}
overrides: {{model.name: resnet18_sn}}
grid:
  norm: {{key: model.norm, values: {{SN: sn, BN: bn}}}}
  setting:
    8x32: {{data.batch_size: 32}}
    8x1: {{data.batch_size: 1}}
exclude: [{{norm: BN, setting: 8x1}}]
patches: [{{match: {{norm: SN, setting: 8x1}}, set: {{model.sn_using_bn: false}}}}]
""")
    return path


def _log(epochs: int, offset: float) -> list[dict]:
    out = []
    for e in range(epochs):
        out.append({"epoch": e, "step": 10 * (e + 1), "val/val/top1_acc": 10 * e + offset})
        out.append({"epoch": e, "epoch_float": float(e), "step": 10 * (e + 1), "train/loss_epoch": 2.0 - e / 10,
                    "train/top1_acc": 12 * e + offset})
    return out


def test_sn_weights_and_curves_over_an_experiment(tmp_path):
    from ibnnet.experiments.grid import load_experiment
    exp_file = _experiment(tmp_path)
    runs = tmp_path / "runs"
    folders = {c.name: runs / "sn_fig" / f.path.name for c, _, f in load_experiment(exp_file).folders()}
    torch.manual_seed(0)
    three = timm.create_model("resnet18_sn")
    with torch.no_grad():
        for m in three.modules():
            if hasattr(m, "mean_weight"):
                m.mean_weight.copy_(torch.tensor([0.0, 0.0, math.log(2.0)]))   # BN weight 1/2, IN = LN = 1/4
    two = timm.create_model("resnet18_sn", norm_kwargs={"sn_using_bn": False})
    _finished_run(folders["norm=SN_setting=8x32"], three.state_dict(), _log(3, 1.0))
    _finished_run(folders["norm=SN_setting=8x1"], two.state_dict(), _log(2, 5.0))
    _finished_run(folders["norm=BN_setting=8x32"], timm.create_model("resnet18_bn").state_dict(), _log(3, 0.0))

    out = tmp_path / "snw"
    cli("analyze", "sn-weights", exp_file, "--runs", runs, "--out", out)
    net = {r["label"]: r for r in rows(out / "network.csv")}
    assert set(net) == {"SN 8x32", "SN 8x1"}   # the BN cell has no SN layers: skipped
    assert float(net["SN 8x32"]["mean_BN"]) == pytest.approx(0.5)
    assert float(net["SN 8x32"]["mean_IN"]) == pytest.approx(0.25)
    assert float(net["SN 8x32"]["var_LN"]) == pytest.approx(1 / 3)
    assert net["SN 8x1"]["mean_BN"] == "" and float(net["SN 8x1"]["mean_IN"]) == pytest.approx(0.5)
    layers = rows(out / "layers.csv")
    assert sum(r["label"] == "SN 8x32" for r in layers) == 20 and layers[0]["kind"] == "7x7 conv"
    for name in ("network.png", "layers_SN-8x32.png", "layers_SN-8x1.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.width > 400

    # Explicit checkpoints, labelled.
    ck = tmp_path / "a.pth"
    torch.save(three.state_dict(), ck)
    cli("analyze", "sn-weights", "--checkpoint", f"mine={ck}", "--out", tmp_path / "snw2")
    assert [r["label"] for r in rows(tmp_path / "snw2" / "network.csv")] == ["mine"]
    with pytest.raises(AssertionError, match="no Switchable Normalization"):
        bn = tmp_path / "bn.pth"
        torch.save(timm.create_model("resnet18_bn").state_dict(), bn)
        cli("analyze", "sn-weights", "--checkpoint", bn, "--out", tmp_path / "snw3")

    # Learning curves of chosen cells: x = epochs trained, train and val top-1 by default.
    cout = tmp_path / "curves"
    cli("plot", "curves", exp_file, "--runs", runs, "--cells", "norm=SN", "--out", cout)
    pts = rows(cout / "curves.csv")
    assert {r["label"] for r in pts} == {"8x32", "8x1"}
    val = [(float(r["epoch"]), float(r["value"])) for r in pts if r["label"] == "8x32" and r["metric"] == "val/val/top1_acc"]
    assert val == [(1, 1.0), (2, 11.0), (3, 21.0)]
    assert {r["metric"] for r in pts} == {"train/top1_acc", "val/val/top1_acc"}
    with Image.open(cout / "curves.png") as im:
        assert im.format == "PNG"
    # the figure is in the experiment's wandb results run too (offline, beside it)
    from wandb_files import read_run
    (logged,) = (cout / "wandb").glob("offline-run-*")
    step = read_run(logged)["history"][0]
    assert (logged / "files" / step["curves/path"]).read_bytes()[:4] == b"\x89PNG"
    cli("plot", "curves", exp_file, "--runs", runs, "--cells", "BN", "--metrics", "train/loss*", "--out", cout)
    assert {(r["label"], r["metric"]) for r in rows(cout / "curves.csv")} == {("BN 8x32", "train/loss_epoch")}

    with pytest.raises(AssertionError, match="experiment sn_fig: no runs"):
        cli("plot", "curves", exp_file, "--runs", tmp_path / "empty", "--out", cout)
    with pytest.raises(AssertionError, match="no cell matches 'GN'"):
        cli("plot", "curves", exp_file, "--runs", runs, "--cells", "GN", "--out", cout)


def test_fig5_axis_follows_the_paper_numbering():
    names = ["stem"] + [f"layer{g}.{b}" for g, n in zip(range(1, 5), (3, 4, 6, 3)) for b in range(n)]
    numbering = paper_numbering(names)
    assert [n for n, _ in numbering] == list(range(1, 18))
    # IBN-Net-b's IN layers (after conv1, conv2_x, conv3_x) sit at the ends of these groups: 1, 4 and 8.
    assert [n for n, stage in numbering if stage == "conv1"] == [1]
    assert max(n for n, stage in numbering if stage == "conv2_x") == 4
    assert max(n for n, stage in numbering if stage == "conv3_x") == 8
    assert [n for n, stage in numbering if stage == "conv5_x"] == [15, 16, 17]


def test_curves_of_a_cell_with_several_runs_need_where(tmp_path):
    """Two runs of one cell (a variant made under other settings): the figure does not pick one silently;
    --where chooses, as for tables."""
    from ibnnet.experiments.grid import load_experiment
    from ibnnet.runs.folder import RunFolder
    exp_file = _experiment(tmp_path)
    runs = tmp_path / "runs"
    for extra, offset in (((), 1.0), (("trainer.max_epochs=2",), 50.0)):
        for cell, cfg, folder in load_experiment(exp_file).folders((f"paths.runs={runs}", *extra)):
            if cell.name == "norm=SN_setting=8x32":
                RunFolder(folder.path).write_config(cfg)
                _finished_run(folder.path, {}, _log(2, offset))
    with pytest.raises(AssertionError, match=r"several runs \(variants\).*--where"):
        cli("plot", "curves", exp_file, "--runs", runs, "--cells", "norm=SN_setting=8x32", "--out", tmp_path / "c")
    cli("plot", "curves", exp_file, "--runs", runs, "--cells", "norm=SN_setting=8x32", "--where",
        "trainer.max_epochs=2", "--out", tmp_path / "c")
    values = {float(r["value"]) for r in rows(tmp_path / "c" / "curves.csv") if r["metric"] == "val/val/top1_acc"}
    assert values == {50.0, 60.0}   # the variant's log, not the plain run's
