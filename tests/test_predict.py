"""`ibnnet predict`: Cityscapes label-id PNGs that the official evaluator scores exactly like `ibnnet evaluate`."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ibnnet.commands.predict import train_to_label_id_lut
from ibnnet.data.labels import LABEL_TO_TRAIN_ID

try:
    from helpers import cli
except ImportError:  # pragma: no cover
    from tests.helpers import cli

H, W = 40, 64
# The ground truth uses these label ids: 12 evaluated classes and 4 ignored ones (0 unlabeled, 4 static,
# 9 parking, 10 rail track).  Train (31), truck (27), bus (28), motorcycle (32) ... never occur in it.
GT_IDS = [0, 4, 9, 10, 7, 8, 11, 17, 19, 20, 21, 23, 24, 26, 33, 22]
TRAIN_TRAIN_ID = LABEL_TO_TRAIN_ID[31]  # "train": absent from ground truth and (forced) from predictions


def write_fixture(root: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    gts = []
    for split, city, n in (("train", "aachen", 1), ("val", "frankfurt", 2)):
        for i in range(n):
            stem = f"{city}_{i:06d}_{19 + i:06d}"
            img = root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
            img.parent.mkdir(parents=True, exist_ok=True)
            # Smooth-ish image (blocks) so the random network's prediction has regions, not noise.
            blocks = rng.integers(0, 256, (H // 8, W // 8, 3), dtype=np.uint8)
            Image.fromarray(np.kron(blocks, np.ones((8, 8, 1), np.uint8))).save(img)
            gt = root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
            gt.parent.mkdir(parents=True, exist_ok=True)
            ids = np.array(GT_IDS, np.uint8)[rng.integers(0, len(GT_IDS), (H // 4, W // 4))]
            Image.fromarray(np.kron(ids, np.ones((4, 4), np.uint8))).save(gt)
            if split == "val":
                gts.append(gt)
    return gts


CONFIG = """
defaults: [{{optim: demo}}, {{trainer: cpu_demo}}, {{logger: disabled}}, {{launcher: local}}]
task: segmentation
model: {{name: resnet18_bn, pretrained: false}}
segmentation: {{head: fcn, output_stride: 8}}
data:
  train: {{name: cityscapes, dataset: cityscapes, split: train, root: {root}}}
  val:
    - {{name: cityscapes, dataset: cityscapes, split: val, root: {root}, scales: [1.0, 1.5], flip: true}}
  num_classes: 19
  batch_size: 2
  eval_batch_size: 1
  num_workers: 0
paths: {{runs: {tmp}/runs, results: {tmp}/results}}
trainer: {{enable_progress_bar: false, accelerator: cpu}}
"""


def fixed_checkpoint(config: Path, path: Path, images: list[Path]) -> None:
    """A random-init net, its classifier calibrated on the images so that many classes win somewhere.

    Each class logit is standardised over the images' pixels (a random net otherwise predicts one or two
    classes everywhere), and 'train' is made impossible, so that it is absent from prediction and truth.
    """
    from omegaconf import OmegaConf

    from ibnnet.config import compose
    from ibnnet.tasks import TASKS
    cfg = compose(config, [])
    torch.manual_seed(0)
    task = TASKS["segmentation"](OmegaConf.to_container(cfg, resolve=True), 19, ["cityscapes"]).eval()
    last = task.net.head[-1]
    feats = []
    hook = last.register_forward_hook(lambda m, i, o: feats.append(o.detach()))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    with torch.no_grad():
        for img in images:
            x = torch.from_numpy(np.asarray(Image.open(img).convert("RGB")).copy()).permute(2, 0, 1) / 255.0
            task(((x - mean) / std)[None])
        hook.remove()
        logits = torch.cat([f.permute(1, 0, 2, 3).flatten(1) for f in feats], 1)   # (classes, pixels)
        mu, sd = logits.mean(1), logits.std(1).clamp(min=1e-6)
        last.weight.div_(sd.view(-1, 1, 1, 1))
        last.bias.copy_((last.bias - mu) / sd)
        last.bias[TRAIN_TRAIN_ID] = -1e4
    torch.save(task.net.state_dict(), path)


def official_miou(gts: list[Path], pred_root: Path, export_dir: Path) -> tuple[float, dict]:
    """cityscapesscripts' evalPixelLevelSemanticLabeling, in process, on our files."""
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev

    args = ev.args
    args.predictionPath = str(pred_root)
    args.predictionWalk = None
    args.evalInstLevelScore = False   # iIoU needs *_instanceIds.png; mIoU (IoU class) does not
    args.JSONOutput = False
    args.quiet = True
    args.exportFile = str(export_dir / "result.json")
    preds = [ev.getPrediction(args, str(gt)) for gt in gts]
    result = ev.evaluateImgLists(preds, [str(g) for g in gts], args)
    return result["averageScoreClasses"], result["classScores"]


def test_train_to_label_id_lut():
    lut = train_to_label_id_lut()
    for label_id, train_id in LABEL_TO_TRAIN_ID.items():
        if train_id != 255:
            assert lut[train_id] == label_id
    assert lut[0] == 7 and lut[18] == 33 and lut[255] == 0


def test_predict_matches_official_cityscapes_evaluation(tmp_path, monkeypatch):
    root = tmp_path / "cityscapes"
    gts = write_fixture(root)
    config = tmp_path / "seg.yaml"
    config.write_text(CONFIG.format(root=root, tmp=tmp_path))
    ckpt = tmp_path / "net.pth"
    fixed_checkpoint(config, ckpt, sorted((root / "leftImg8bit" / "val").rglob("*.png")))
    monkeypatch.setenv("CITYSCAPES_DATASET", str(root))

    out = tmp_path / "pred"
    cli("predict", config, "--checkpoint", ckpt, "--out", out)
    files = sorted((out / "cityscapes").rglob("*.png"))
    assert [f.relative_to(out / "cityscapes").as_posix() for f in files] == [
        "frankfurt/frankfurt_000000_000019_leftImg8bit.png", "frankfurt/frankfurt_000001_000020_leftImg8bit.png"]
    evaluated_ids = {k for k, v in LABEL_TO_TRAIN_ID.items() if v != 255}
    predicted = set()
    for f in files:
        with Image.open(f) as im:
            assert im.mode == "L" and im.size == (W, H)
            arr = np.asarray(im)
        predicted |= set(np.unique(arr).tolist())
    assert predicted <= evaluated_ids and len(predicted) >= 6, predicted   # label ids, several classes
    assert 31 not in predicted
    manifest = json.loads((out / "predictions.json").read_text())
    assert manifest["sets"]["cityscapes"]["images"] == 2 and manifest["sets"]["cityscapes"]["flip"] is True

    cli("evaluate", config, "--checkpoint", ckpt, "--appearance", "none", "--out", tmp_path / "eval")
    ours = json.loads((tmp_path / "eval" / "evaluation.json").read_text())["results"]["cityscapes"]
    official, per_class = official_miou(gts, out / "cityscapes", tmp_path)
    # 'train' is absent from both: NaN for the official script, left out of both means.
    assert np.isnan(per_class["train"]) and np.isnan(ours[f"iou_{TRAIN_TRAIN_ID}"])
    assert abs(ours["miou"] / 100 - official) < 1e-9, (ours["miou"], official)
    for label_id, train_id in LABEL_TO_TRAIN_ID.items():
        if train_id == 255 or label_id < 0:
            continue
        from cityscapesscripts.helpers.labels import id2label
        theirs = per_class[id2label[label_id].name]
        mine = ours.get(f"iou_{train_id}", float("nan"))
        assert (np.isnan(theirs) and np.isnan(mine)) or abs(mine / 100 - theirs) < 1e-9, (label_id, mine, theirs)

    # Resumable: existing files are kept (not rewritten); a deleted one is predicted again, identically.
    before = {f: f.stat().st_mtime_ns for f in files}
    data0 = files[0].read_bytes()
    files[0].unlink()
    cli("predict", config, "--checkpoint", ckpt, "--out", out)
    assert files[0].read_bytes() == data0
    assert files[1].stat().st_mtime_ns == before[files[1]]


def test_predict_test_split_and_errors(tmp_path):
    root = tmp_path / "cityscapes"
    write_fixture(root)
    img = root / "leftImg8bit" / "test" / "berlin" / "berlin_000000_000019_leftImg8bit.png"
    img.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(img)   # test images come without labels
    config = tmp_path / "seg.yaml"
    config.write_text(CONFIG.format(root=root, tmp=tmp_path))
    ckpt = tmp_path / "net.pth"
    fixed_checkpoint(config, ckpt, [img])
    out = tmp_path / "pred"
    cli("predict", config, "--checkpoint", ckpt, "--out", out, "--split", "test")
    assert [p.name for p in (out / "cityscapes_test").rglob("*.png")] == ["berlin_000000_000019_leftImg8bit.png"]
    with pytest.raises(AssertionError, match="needs trained weights"):
        cli("predict", config, "--out", out)
    with pytest.raises(AssertionError, match="no evaluation set named"):
        cli("predict", config, "--checkpoint", ckpt, "--out", out, "--sets", "nope")


def test_predict_gta5_frames_at_their_own_size(tmp_path):
    try:
        import fixtures_datasets as fx
    except ImportError:  # pragma: no cover
        from tests import fixtures_datasets as fx
    city = tmp_path / "cityscapes"
    write_fixture(city)
    config = tmp_path / "seg.yaml"
    config.write_text(CONFIG.format(root=city, tmp=tmp_path))
    ckpt = tmp_path / "net.pth"
    fixed_checkpoint(config, ckpt, sorted((city / "leftImg8bit" / "val").rglob("*.png")))
    gta = tmp_path / "gta5"
    fx.write_gta5(gta, n=3, size=(W, H))
    (gta / "train.txt").write_text("1\n")
    (gta / "val.txt").write_text("00002\n3\n")
    # Evaluated resized (like the paper's GTA5 at 1024x563), written back at the frame's own size.
    gcfg = tmp_path / "gta.yaml"
    gcfg.write_text(CONFIG.format(root=city, tmp=tmp_path).replace(
        "    - {name: cityscapes, dataset: cityscapes, split: val,",
        f"    - {{name: gta5, dataset: gta5, split: val, root: {gta}, resize: [32, 20]}}\n"
        "    - {name: cityscapes, dataset: cityscapes, split: val,"))
    out = tmp_path / "pred"
    cli("predict", gcfg, "--checkpoint", ckpt, "--out", out, "--sets", "gta5")
    files = sorted((out / "gta5").iterdir())
    assert [f.name for f in files] == ["00002.png", "00003.png"] and not (out / "cityscapes").exists()
    for f in files:
        with Image.open(f) as im:
            assert im.mode == "L" and im.size == (W, H)
            assert set(np.unique(np.asarray(im)).tolist()) <= {k for k, v in LABEL_TO_TRAIN_ID.items() if v != 255}
