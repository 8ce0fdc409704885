"""The paper's experiment files: exactly the paper's cells, and one cell of each runs end to end."""
from pathlib import Path

import pytest
from fixtures_datasets import (
    write_cityscapes,
    write_gta5,
    write_imagenet,
    write_split_mat,
)

from ibnnet.experiments.grid import load_experiment
from ibnnet.results.table import write_table
from ibnnet.runs.runner import execute, prepare

REPO = Path(__file__).resolve().parents[1]
TABLES = {"ibn_table1": 3, "ibn_table2": 12, "ibn_table3": 7, "ibn_table4": 5, "ibn_table5": 6, "ibn_table6": 6,
          "ibn_table8": 8, "sn_table2": 28, "sn_table5": 6}


@pytest.mark.parametrize("name", sorted(TABLES))
def test_each_table_expands_to_exactly_the_papers_cells(name):
    exp = load_experiment(name)
    assert set(exp.scales) >= {"full", "reduced"}
    assert all(s.get("gpu_hours") for s in exp.scales.values())  # the expected cost is written down
    for scale in exp.scales:
        configs = load_experiment(name, scale).configs()
        cells = {tuple(sorted(c.labels.items())) for c, _ in configs}
        assert len(configs) == TABLES[name]
        paper_cells = {tuple(sorted((k, str(v)) for k, v in e.items() if k in exp.axes)) for e in exp.paper}
        assert cells == paper_cells, (scale, cells ^ paper_cells)
        evals = {s.name for _, cfg in configs for s in cfg.data.val}
        assert {e["eval"] for e in exp.paper if "eval" in e} <= evals


def test_every_paper_number_is_one_table_cell():
    from ibnnet.results.table import build_table, collect
    for name in TABLES:
        exp = load_experiment(name)
        tab = build_table(exp, collect(exp))
        shown = sum(v is not None for c in tab["cells"].values() for v in c["paper"])
        expected = sum(1 for e in exp.paper for m in exp.table["metrics"] if e.get(m) is not None)
        assert shown == expected, name


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    wnids = ["n01440764", "n01443537", "n02102040"]
    write_imagenet(root / "imagenet", "train", wnids, per_class=6, size=(40, 32))
    write_imagenet(root / "imagenet", "val", wnids, per_class=2, size=(40, 32))
    write_imagenet(root / "imagenet_monet", "val", wnids, per_class=2, size=(40, 32))
    # the `ibnnet data shrink` copy the reduced ImageNet scales of Tables 1-3 train from
    from ibnnet.data.tools.shrink import shrink_imagenet
    shrink_imagenet(root / "imagenet", root / "imagenet-160", 160, progress=False)
    write_cityscapes(root / "cityscapes", splits={"train": {"aachen": 6, "bochum": 4}, "val": {"frankfurt": 2}},
                     size=(64, 32))
    write_gta5(root / "gta5", n=12, size=(64, 32))
    write_split_mat(root / "gta5", train=list(range(1, 11)), val=[11, 12], test=[])
    return root


def tiny(tmp: Path, root: Path, seg: bool) -> tuple[str, ...]:
    common = (f"paths.data={root}", f"paths.runs={tmp / 'runs'}", "model.pretrained=false", "trainer.max_epochs=1",
              "trainer.accelerator=cpu", "data.num_workers=0", "logger.wandb.enabled=false",
              "trainer.enable_progress_bar=false", "trainer.limit_val_batches=2", "trainer.limit_train_batches=2",
              "data.augment.image_size=32", "data.augment.eval_resize=36", "data.augment.crop_size=[32,32]")
    if seg:
        return common + ("trainer.devices=1", "trainer.strategy=auto", "data.batch_size=1", "data.eval_batch_size=1")
    # 64 px: the all-IN network of Table 5 needs more than one pixel per channel in layer4
    return common + ("data.batch_size=2", "data.class_subset=0", "data.augment.image_size=64",
                     "data.augment.eval_resize=72")


def run_cell(name, cell_name, overrides, scale=None):
    exp = load_experiment(name, scale)
    (cell, cfg, folder), = [t for t in exp.folders(overrides) if t[0].name == cell_name]
    prepare(cfg)
    metrics = execute(folder.path)
    assert metrics is not None and folder.is_done(), folder.log_tail(30)
    return exp, metrics


@pytest.mark.parametrize("name,cell,seg", [
    ("ibn_table1", "model=IBN-Net50-b", False),
    # ibn_table2's DenseNet cell: its ResNet-50 IBN-a cells run the same path as ibn_table4's and ibn_table5's
    ("ibn_table2", "backbone=DenseNet121_variant=IBN-a", False),
    ("ibn_table3", "variant=IBN-c", False),
    ("ibn_table4", "groups=1-2", False),
    ("ibn_table5", "ratio=full", False),
])
def test_one_classification_cell_runs_on_fixtures(tmp_path, data_root, name, cell, seg):
    overrides = tiny(tmp_path, data_root, seg) + ("trainer.devices=1", "trainer.strategy=auto")
    exp, metrics = run_cell(name, cell, overrides, "reduced")
    evals = set(metrics["metrics"])
    assert {e["eval"] for e in exp.paper if "eval" in e} <= evals | {"origin"} and evals
    assert all(0 <= v["top1_err"] <= 100 for v in metrics["metrics"].values())
    # metrics.json names the copy of the training images that was read
    shrunk = metrics["train_data"]["shrunk_copy"]
    if "data.shrunk_short_side" in str(exp.scales["reduced"]):
        assert shrunk["short_side"] == 160 and shrunk["root"] == str(data_root / "imagenet-160")
    else:
        assert shrunk is None
    md = write_table(exp, tmp_path / "results", overrides)["markdown"].read_text()
    assert "(pending)" in md or len(exp.cells) == 1


def test_segmentation_tables_chain_from_gta5_to_cityscapes(tmp_path, data_root):
    overrides = tiny(tmp_path, data_root, seg=True) + (
        "data.val=[{name: cityscapes, dataset: cityscapes, split: val}, {name: gta5, dataset: gta5, split: val}]",
        "data.train.resize=null")
    _, m6 = run_cell("ibn_table6", "train=GTA5_model=ResNet50", overrides, "reduced")
    assert set(m6["metrics"]) == {"cityscapes", "gta5"} and "miou" in m6["metrics"]["gta5"]
    # Table 8 starts from that GTA5 model (run:ibn_table6/...@reduced) and fine-tunes on 10 % of Cityscapes
    exp8, m8 = run_cell("ibn_table8", "model=ResNet50_fraction=10%", tiny(tmp_path, data_root, seg=True), "reduced")
    assert set(m8["metrics"]) == {"cityscapes"}


def test_sn_tables_chain_from_imagenet_to_cityscapes(tmp_path, data_root):
    # SN Table 2 at (8, 2), emulated on one process with ghost batches (the reduced scale)
    cls = tuple(o for o in tiny(tmp_path, data_root, seg=False) if not o.startswith("data.batch_size"))
    exp2, m2 = run_cell("sn_table2", "norm=SN_setting=8x2", cls + ("data.batch_size=2",), "reduced")
    assert m2["world_size"] == 1 and m2["emulated_devices"] == 8
    _, m5 = run_cell("sn_table5", "norm=SN", tiny(tmp_path, data_root, seg=True) + (
        "data.val=[{name: single, dataset: cityscapes, split: val}, "
        "{name: multi, dataset: cityscapes, split: val, scales: [0.75, 1.0, 1.25], flip: true}]",), "reduced")
    assert set(m5["metrics"]) == {"single", "multi"}
    # SN sec. 3: scored with batch-average statistics, like every SN cell (no setting in the file)
    assert m5["inference"] == "batch_average" and set(m5["metrics_moving_average"]) == {"single", "multi"}


def test_fig5_divergence_file_runs_on_fixtures(tmp_path, data_root, monkeypatch):
    from helpers import cli
    monkeypatch.setenv("IBNNET_DATA", str(data_root))
    out = cli("analyze", "divergence", REPO / "experiments" / "ibn_fig5.yaml", "--no-pretrained",
              "--pair", "cityscapes_vs_gta5", "--pair", "photo_vs_monet", "--max-images", "3", "--num-workers", "0",
              "--out", tmp_path / "fig5")
    assert "| stem |" in out and "IBN-Net50-b" in out
    for pair in ("cityscapes_vs_gta5", "photo_vs_monet"):
        rows = (tmp_path / "fig5" / pair / "divergence.csv").read_text().splitlines()
        assert rows[0] == "layer,ResNet50,IBN-Net50-a,IBN-Net50-b" and len(rows) == 1 + 17
        assert (tmp_path / "fig5" / pair / "divergence.png").stat().st_size > 1000
