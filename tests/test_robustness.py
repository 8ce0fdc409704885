"""ImageNet robustness sets on fixtures in their real layouts: ImageNet-C generated with `ibnnet data corrupt`
(the authors' recipe), its mCE / relative mCE, ImageNet-R scored on its 200 logits, ImageNet-Sketch, and
experiments/robustness_imagenet.yaml evaluated end to end with no training."""
import io
import json
import shutil

import numpy as np
import pytest
import torch
from fixtures_datasets import write_jpeg
from PIL import Image

from ibnnet.data.tools.check import check_dataset
from ibnnet.data.tools.corruptions import MARKER, corrupt_imagenet, image_seed
from ibnnet.data.datasets.robustness import (
    ALEXNET_CLEAN_ERROR,
    ALEXNET_ERRORS,
    CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    IMAGENET_R_WNIDS,
    imagenet1k_wnids,
    imagenet_c,
    imagenet_c_absent,
    imagenet_c_summary,
    imagenet_r,
    imagenet_sketch,
)
from ibnnet.errors import DataError, DataNotFoundError

WNIDS = imagenet1k_wnids()
R_IN, NOT_R = "n01443537", "n01440764"   # a class of ImageNet-R, and one it does not have


def _image(h, w, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // w, y * 255 // h, np.full_like(x, 90)], -1)
    return np.clip(base + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def write_val(root, per_class=(("n01440764", 2), ("n01443537", 2)), size=(60, 50), all_classes=True):
    """ImageNet val as class folders; with ``all_classes`` every one of the 1000 wnids has a (mostly empty) folder."""
    if all_classes:
        for w in WNIDS:
            (root / w).mkdir(parents=True, exist_ok=True)
    for c, (wnid, n) in enumerate(per_class):
        for i in range(n):
            write_jpeg(root / wnid / f"ILSVRC2012_val_{c}{i:07d}.JPEG", _image(size[1], size[0], 10 * c + i))


def test_mce_and_relative_mce_follow_hendrycks_and_dietterich():
    # a model exactly as bad as AlexNet everywhere: CE 100 for every corruption, mCE 100, relative mCE 100
    alexnet = {(c, s): 100 * ALEXNET_ERRORS[c] for c in CORRUPTIONS for s in range(1, 6)}
    out = imagenet_c_summary(alexnet, clean_error=100 * ALEXNET_CLEAN_ERROR)
    assert out["mce"] == pytest.approx(100) and out["relative_mce"] == pytest.approx(100)
    # errors varying by severity: CE_c = sum_s E / sum_s E^AlexNet, relative CE from the degradation over clean
    errors = {(c, s): 10.0 + 3 * s + i for i, c in enumerate(CORRUPTIONS) for s in range(1, 6)}
    out = imagenet_c_summary(errors, clean_error=12.0, top5={k: v / 2 for k, v in errors.items()})
    ce = [sum(errors[(c, s)] for s in range(1, 6)) / (5 * 100 * ALEXNET_ERRORS[c]) * 100 for c in CORRUPTIONS]
    rel = [sum(errors[(c, s)] - 12.0 for s in range(1, 6)) / (5 * 100 * (ALEXNET_ERRORS[c] - ALEXNET_CLEAN_ERROR))
           * 100 for c in CORRUPTIONS]
    assert out["mce"] == pytest.approx(np.mean(ce)) and out["relative_mce"] == pytest.approx(np.mean(rel))
    assert out["ce_fog"] == pytest.approx(ce[CORRUPTIONS.index("fog")])
    assert out["top1_err"] == pytest.approx(np.mean(list(errors.values())))
    assert out["top5_err"] == pytest.approx(out["top1_err"] / 2)
    # no normaliser is made up: a severity missing, another label space, no clean error
    partial = {k: v for k, v in errors.items() if k[1] != 5}
    assert "mce" not in imagenet_c_summary(partial) and "ce_fog" not in imagenet_c_summary(partial)
    assert "mce" not in imagenet_c_summary(errors, 12.0, num_classes=100)
    assert "mce" in imagenet_c_summary(errors) and "relative_mce" not in imagenet_c_summary(errors)


def _release_layout(root, extras=True):
    """ImageNet-C as the release unpacks: the 15 tars flat, extra.tar's folders flat too except saturate,
    kept under its extra/ folder (both are read); one image of NOT_R per corruption and severity."""
    for c in CORRUPTIONS + (EXTRA_CORRUPTIONS if extras else ()):
        for s in range(1, 6):
            folder = root / ("extra" if c == "saturate" else "") / c / str(s)
            write_val(folder, per_class=((NOT_R, 1),), size=(32, 32), all_classes=False)


def test_extra_corruptions_are_read_checked_and_stay_outside_the_mce(tmp_path, caplog):
    from omegaconf import OmegaConf

    from ibnnet.config import compose
    from ibnnet.data.datamodule import DataModule
    root = tmp_path / "imagenet-c"
    _release_layout(root)
    for c, s in (("speckle_noise", 1), ("spatter", 3), ("saturate", 5)):
        assert [label for _, label in imagenet_c(root, c, s).samples] == [WNIDS.index(NOT_R)]
    report = check_dataset("imagenet_c", root)
    assert report.ok, report.render()
    assert report.counts["extra/speckle_noise/1"] == 1 and report.counts["extra/saturate/5"] == 1
    assert len(report.counts) == 75 + 20 and "extra/spatter/3" in report.render()

    # the experiment's spec of the extras is read where any of its folders is, skipped (optional) where none is
    spec = OmegaConf.create({"name": "imagenet_c_extra", "corruptions": list(EXTRA_CORRUPTIONS), "severities": None})
    assert imagenet_c_absent(spec, root) is None
    only15 = tmp_path / "data" / "imagenet-c"
    _release_layout(only15, extras=False)
    assert "none of its corruption folders (speckle_noise, gaussian_blur, spatter, saturate)" in \
        imagenet_c_absent(spec, only15)
    assert imagenet_c_absent(OmegaConf.create({"name": "c", "corruptions": None, "severities": None}), only15) is None
    assert check_dataset("imagenet_c", only15).ok and not any("extra" in k for k in check_dataset(
        "imagenet_c", only15).counts)
    # the robustness config: the 15 are evaluated, the extras' spec skipped with a warning (as ImageNet-R here)
    cfg = compose("configs/imagenet_robustness.yaml", [f"paths.data={tmp_path / 'data'}"])
    names = DataModule(cfg).val_names
    assert names == ["origin"] + [f"imagenet_c/{c}/{s}" for c in CORRUPTIONS for s in range(1, 6)]
    assert "evaluation set imagenet_c_extra skipped: none of its corruption folders" in caplog.text
    # with extra.tar unpacked beside the 15 (root, the folder above): the extras' 20 sets are read too
    names = DataModule(compose("configs/imagenet_robustness.yaml", [f"paths.data={tmp_path}"])).val_names
    assert names[76:] == [f"imagenet_c_extra/{c}/{s}" for c in EXTRA_CORRUPTIONS for s in range(1, 6)]

    # some extras only: a partial set is a problem, with the way to complete it
    shutil.rmtree(root / "spatter")
    report = check_dataset("imagenet_c", root)
    assert not report.ok and "missing: spatter/1/ (extra corruption)" in report.problems
    assert "--extras" in " ".join(report.hints) and "extra/saturate/2" in report.counts

    # mCE and relative mCE over the 15 only: the extras' errors (here far worse) change none of the benchmark's
    # numbers; they get their plain error (no AlexNet normaliser is published for them)
    errors = {(c, s): 20.0 + 2 * s + i for i, c in enumerate(CORRUPTIONS) for s in range(1, 6)}
    extras = {(c, s): 90.0 - s - 3 * i for i, c in enumerate(EXTRA_CORRUPTIONS) for s in range(1, 6)}
    out = imagenet_c_summary({**errors, **extras}, clean_error=25.0)
    by_hand = np.mean([sum(errors[(c, s)] for s in range(1, 6)) / (5 * 100 * ALEXNET_ERRORS[c]) * 100
                       for c in CORRUPTIONS])
    rel_by_hand = np.mean([sum(errors[(c, s)] - 25.0 for s in range(1, 6))
                           / (5 * 100 * (ALEXNET_ERRORS[c] - ALEXNET_CLEAN_ERROR)) * 100 for c in CORRUPTIONS])
    assert out["mce"] == pytest.approx(by_hand) and out["relative_mce"] == pytest.approx(rel_by_hand)
    assert out["top1_err"] == pytest.approx(np.mean(list(errors.values())))
    assert out["err_severity_2"] == pytest.approx(np.mean([errors[(c, 2)] for c in CORRUPTIONS]))
    without = imagenet_c_summary(errors, clean_error=25.0)
    assert all(out[k] == pytest.approx(v) for k, v in without.items())
    assert out["err_spatter"] == pytest.approx(90.0 - 3 - 6) and out["err_saturate"] == pytest.approx(90.0 - 3 - 9)
    assert out["extra_err"] == pytest.approx(np.mean(list(extras.values())))
    assert out["extra_err_severity_5"] == pytest.approx(np.mean([extras[(c, 5)] for c in EXTRA_CORRUPTIONS]))
    assert not any(k.endswith(EXTRA_CORRUPTIONS) for k in out if k.startswith(("ce_", "rel_ce_")))
    # a spec of the extras alone: its top1_err is their mean, and still no mCE
    alone = imagenet_c_summary(extras, clean_error=25.0)
    assert alone["top1_err"] == pytest.approx(alone["extra_err"]) and "mce" not in alone
    with pytest.raises(DataError, match="the extras \\(outside the mCE\\) speckle_noise"):
        imagenet_c(root, "speckle_nosie", 1)


def test_data_corrupt_makes_the_extras_on_request(tmp_path):
    from helpers import cli
    src, dst = tmp_path / "val", tmp_path / "c"
    write_val(src, per_class=((NOT_R, 1),), all_classes=False, size=(60, 50))
    cli("data", "corrupt", src, dst, "--corruption", "speckle_noise", "--severity", "2", "--resize", "40",
        "--crop", "32", "--workers", "1", "--no-progress")
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*.JPEG")) == \
        [f"speckle_noise/2/{NOT_R}/ILSVRC2012_val_00000000.JPEG"]
    # the authors' speckle noise, severity 2: x + x * N(0, 0.2), clipped, on the resized and cropped image;
    # the noise drawn from NumPy's global RNG seeded per image, as for the 15
    with Image.open(src / NOT_R / "ILSVRC2012_val_00000000.JPEG") as im:
        x = np.asarray(im.convert("RGB").resize((48, 40), Image.BILINEAR).crop((8, 4, 40, 36))) / 255.0
    np.random.seed(image_seed(0, "speckle_noise", 2, f"{NOT_R}/ILSVRC2012_val_00000000.JPEG"))
    expected = io.BytesIO()
    Image.fromarray(np.uint8(np.clip(x + x * np.random.normal(size=x.shape, scale=0.2), 0, 1) * 255)).save(
        expected, "JPEG", quality=85, optimize=True)
    assert (dst / "speckle_noise" / "2" / NOT_R / "ILSVRC2012_val_00000000.JPEG").read_bytes() == expected.getvalue()
    # --extras: the four, none of the 15; the set stays incomplete (the 15 are the benchmark)
    cli("data", "corrupt", src, dst, "--extras", "--severity", "1", "--resize", "40", "--crop", "32",
        "--workers", "1", "--no-progress")
    assert sorted({p.relative_to(dst).parts[0] for p in dst.rglob("*.JPEG")}) == sorted(EXTRA_CORRUPTIONS)
    marker = json.loads((dst / MARKER).read_text())
    assert "saturate/1" in marker["done"] and not marker["complete"]
    with pytest.raises(AssertionError, match="unknown ImageNet-C corruption"):
        cli("data", "corrupt", src, dst, "--corruption", "splatter", "--no-progress")


def test_imagenet_c_generation_follows_the_recipe_and_resumes(tmp_path):
    src, dst = tmp_path / "val", tmp_path / "c"
    write_val(src, all_classes=False, size=(60, 50))
    kw = dict(corruptions=["contrast", "gaussian_noise", "glass_blur", "fog", "frost", "motion_blur"],
              severities=[1, 5], resize=40, crop=32, progress=False)
    first = corrupt_imagenet(src, dst, workers=2, **kw)
    assert (first.written, first.skipped, first.failed) == (4 * 6 * 2, 0, [])
    out = dst / "contrast" / "1" / NOT_R / "ILSVRC2012_val_00000000.JPEG"
    with Image.open(out) as im:
        assert im.format == "JPEG" and im.size == (32, 32)
    # the authors' recipe for contrast, severity 1: Resize (shorter side, bilinear), CenterCrop, then
    # clip((x - mean) * 0.4 + mean), np.uint8, JPEG quality 85 with optimize: the very same bytes
    with Image.open(src / NOT_R / "ILSVRC2012_val_00000000.JPEG") as im:
        resized = im.convert("RGB").resize((48, 40), Image.BILINEAR)
    x = np.asarray(resized.crop((8, 4, 40, 36))) / 255.0
    means = x.mean(axis=(0, 1), keepdims=True)
    expected = io.BytesIO()
    Image.fromarray(np.uint8(np.clip((x - means) * 0.4 + means, 0, 1) * 255)).save(expected, "JPEG", quality=85,
                                                                                   optimize=True)
    assert out.read_bytes() == expected.getvalue()
    # resumable and reproducible: a rerun writes nothing; a lost file comes back byte for byte, also with
    # another worker count (the noise is seeded per image, not per worker)
    lost = dst / "glass_blur" / "5" / R_IN / "ILSVRC2012_val_10000001.JPEG"
    kept = lost.read_bytes()
    lost.unlink()
    again = corrupt_imagenet(src, dst, workers=1, **kw)
    assert (again.written, again.skipped) == (1, 47) and lost.read_bytes() == kept
    other = corrupt_imagenet(src, tmp_path / "c1", workers=1, **kw)
    assert other.written == 48
    for f in dst.rglob("*.JPEG"):
        assert (tmp_path / "c1" / f.relative_to(dst)).read_bytes() == f.read_bytes(), f
    # split over two jobs (--shard K/N), the same bytes; a run without a shard then finds everything done
    for k in (0, 1):
        assert corrupt_imagenet(src, tmp_path / "c2", shard=(k, 2), **kw).written == 24
    assert sorted(p.relative_to(tmp_path / "c2") for p in (tmp_path / "c2").rglob("*.JPEG")) == \
        sorted(p.relative_to(dst) for p in dst.rglob("*.JPEG"))
    assert all((tmp_path / "c2" / f.relative_to(dst)).read_bytes() == f.read_bytes() for f in dst.rglob("*.JPEG"))
    assert corrupt_imagenet(src, tmp_path / "c2", **kw).written == 0
    marker = json.loads((tmp_path / "c2" / MARKER).read_text())
    assert "glass_blur/5" in marker["done"] and "snow/1" not in marker["done"]
    marker = json.loads((dst / MARKER).read_text())
    assert marker["quality"] == 85 and not marker["complete"]   # 6 of the 15 corruptions
    with pytest.raises(DataError, match="quality 85 -> 90"):
        corrupt_imagenet(src, dst, **dict(kw, quality=90))


def test_robustness_readers_label_in_imagenet_1k(tmp_path):
    c_root = tmp_path / "imagenet-c"
    write_val(c_root / "fog" / "3", all_classes=False)
    write_val(c_root / "blur" / "defocus_blur" / "1", per_class=((R_IN, 1),), all_classes=False)  # category folders
    ds = imagenet_c(c_root, "fog", 3)
    assert sorted({label for _, label in ds.samples}) == [WNIDS.index(NOT_R), WNIDS.index(R_IN)] == [0, 1]
    assert imagenet_c(c_root, "defocus_blur", 1).samples[0][1] == WNIDS.index(R_IN)
    with pytest.raises(DataNotFoundError, match=r"ImageNet-C snow/2 folder not found: .*imagenet-c/snow/2"):
        imagenet_c(c_root, "snow", 2)
    (c_root / "fog" / "3" / "not_a_wnid").mkdir()
    with pytest.raises(DataError, match="not ImageNet-1k wnids: \\['not_a_wnid'\\]"):
        imagenet_c(c_root, "fog", 3)

    r_root = tmp_path / "r"
    write_val(r_root / "imagenet-r", per_class=((R_IN, 2), ("n12267677", 1)), all_classes=False)
    ds = imagenet_r(r_root)
    assert [label for _, label in ds.samples] == [WNIDS.index(R_IN)] * 2 + [WNIDS.index("n12267677")]
    assert ds.logit_classes == [WNIDS.index(w) for w in IMAGENET_R_WNIDS] and len(ds.logit_classes) == 200
    write_val(r_root / "imagenet-r", per_class=((NOT_R, 1),), all_classes=False)
    with pytest.raises(DataError, match="outside its 200 classes: \\['n01440764'\\]"):
        imagenet_r(r_root)

    s_root = tmp_path / "sketch-release"
    write_val(s_root / "sketch", per_class=(("n15075141", 2),), all_classes=False)
    assert {label for _, label in imagenet_sketch(s_root).samples} == {999}

    report = check_dataset("imagenet_c", c_root)
    assert not report.ok and report.counts["defocus_blur/1"] == 1 and len(report.counts) == 1
    assert "missing: gaussian_noise/1/" in report.problems and "ibnnet data corrupt" in " ".join(report.hints)
    assert "... and 53 more missing ImageNet-C folders" in report.problems   # 75 - fog/3 - defocus_blur/1 - 20 listed
    assert any("not_a_wnid" in p for p in report.problems)
    assert check_dataset("imagenet_sketch", s_root).counts == {"images": 2, "classes": 1}


def test_robustness_experiment_evaluates_official_weights_end_to_end(tmp_path):
    """experiments/robustness_imagenet.yaml, its IBN-Net50-a cell on fixtures: no training, ImageNet val,
    all 75 ImageNet-C sets made by `ibnnet data corrupt` and the 20 of its extras (`--extras`), ImageNet-R on
    its 200 logits, Sketch; the table."""
    from helpers import cli
    from test_paper_experiments import run_cell

    from ibnnet.data.transforms.pipeline import normalize_batch
    from ibnnet.models import create_model
    from ibnnet.results.table import write_table

    root = tmp_path / "data"
    write_val(root / "imagenet" / "val", per_class=((NOT_R, 1), (R_IN, 1)), size=(80, 64))
    cli("data", "corrupt", root / "imagenet" / "val", root / "imagenet-c", "--resize", "36", "--crop", "32",
        "--workers", "2", "--no-progress")
    cli("data", "corrupt", root / "imagenet" / "val", root / "imagenet-c", "--extras", "--resize", "36", "--crop",
        "32", "--workers", "2", "--no-progress")
    write_val(root / "imagenet-r" / "imagenet-r", per_class=((R_IN, 2), ("n01484850", 1)), all_classes=False)
    write_val(root / "imagenet-sketch" / "sketch", per_class=((NOT_R, 1),), all_classes=False)
    # "official weights": a fixed random network's, read through model.pretrained_file. Its classifier
    # prefers class 0 (not an ImageNet-R class) to everything, then R_IN: restricted to ImageNet-R's 200
    # logits, every rendition is called R_IN; unrestricted, none would be.
    torch.manual_seed(0)
    net = create_model("resnet50_ibn_a", num_classes=1000).eval()
    with torch.no_grad():
        net.fc.bias[0] += 50
        net.fc.bias[WNIDS.index(R_IN)] += 25
    torch.save(net.state_dict(), tmp_path / "weights.pth")
    overrides = (f"paths.data={root}", f"paths.runs={tmp_path / 'runs'}", "model.pretrained=false",
                 f"model.pretrained_file={tmp_path / 'weights.pth'}", "trainer.accelerator=cpu",
                 "data.num_workers=0", "logger.wandb.enabled=false", "trainer.enable_progress_bar=false",
                 "data.augment.image_size=32", "data.augment.eval_resize=36", "data.eval_batch_size=4")
    exp, metrics = run_cell("robustness_imagenet", "model=IBN-Net50-a", overrides, "full")
    evals = metrics["metrics"]
    assert metrics["evaluation_only"] and metrics["epochs"] == 0 and metrics["global_step"] == 0
    sets = [f"imagenet_c/{c}/{s}" for c in CORRUPTIONS for s in range(1, 6)]
    extra_sets = [f"imagenet_c_extra/{c}/{s}" for c in EXTRA_CORRUPTIONS for s in range(1, 6)]
    assert set(evals) == {"origin", "imagenet_c", "imagenet_c_extra", "imagenet_r", "sketch", *sets, *extra_sets}
    summary = imagenet_c_summary({(c, s): evals[f"imagenet_c/{c}/{s}"]["top1_err"]
                                  for c in CORRUPTIONS for s in range(1, 6)}, evals["origin"]["top1_err"])
    assert evals["imagenet_c"]["mce"] == pytest.approx(summary["mce"])
    assert evals["imagenet_c"]["relative_mce"] == pytest.approx(summary["relative_mce"])
    # the extras: their own summary, plain errors, no mCE; the 15's summary holds none of them
    extra = evals["imagenet_c_extra"]
    assert extra["err_spatter"] == pytest.approx(np.mean([evals[f"imagenet_c_extra/spatter/{s}"]["top1_err"]
                                                          for s in range(1, 6)]))
    assert extra["top1_err"] == pytest.approx(np.mean([evals[n]["top1_err"] for n in extra_sets]))
    assert "mce" not in extra and "ce_spatter" not in extra and "err_spatter" not in evals["imagenet_c"]

    # ImageNet-R: the prediction ranges over its 200 classes only, as its authors' eval.py scores it
    from torchvision.transforms import v2
    tf = v2.Compose([v2.Resize(36, antialias=True), v2.CenterCrop(32)])
    ds = imagenet_r(root / "imagenet-r")
    x = torch.stack([tf(ds[i][0]) for i in range(len(ds))])
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    with torch.no_grad():
        logits = net(normalize_batch(x))
    r = torch.tensor(ds.logit_classes)
    pred_r = r[logits[:, r].argmax(1)]
    assert (logits.argmax(1) == 0).all() and (pred_r == WNIDS.index(R_IN)).all()
    assert evals["imagenet_r"]["top1_err"] == pytest.approx(100 / 3) == 100 * (pred_r != y).float().mean().item()
    assert evals["sketch"]["top1_err"] == 0 and evals["origin"]["top1_err"] == 50   # class 0 everywhere

    # any checkpoint on the same sets, without a sweep: `ibnnet evaluate` takes the evaluation-only config
    cli("evaluate", "configs/imagenet_robustness.yaml", "--checkpoint", tmp_path / "weights.pth", "--appearance",
        "none", "--out", tmp_path / "eval", "--no-progress", *overrides, "model.name=resnet50_ibn_a",
        "data.val=[{name: origin, dataset: imagenet, split: val}, {name: imagenet_r, dataset: imagenet_r, split: val}]")
    evaluated = json.loads((tmp_path / "eval" / "evaluation.json").read_text())["results"]
    assert evaluated["imagenet_r"] == evals["imagenet_r"] and evaluated["origin"] == evals["origin"]

    paths = write_table(exp, tmp_path / "results", overrides)
    md = paths["markdown"].read_text()
    row = next(line for line in md.splitlines() if line.startswith("| IBN-Net50-a"))
    assert f"{evals['imagenet_c']['mce']:.2f}/{evals['imagenet_c']['relative_mce']:.2f}" in row
    assert "76.70" in md and ("ImageNet-C mCE / rel. mCE: mCE/relative mCE; ImageNet-C extras (not in mCE): top-1 "
                              "err/speckle noise err/gaussian blur err/spatter err/saturate err (%) of the starting "
                              "weights") in md
    assert paths["plot"].stat().st_size > 1000 and "(pending)" in md   # the two cells not run
    # the extras' column, beside ImageNet-C's: their mean error, then each one's
    assert "/".join(f"{extra[k]:.2f}" for k in ("top1_err", "err_speckle_noise", "err_gaussian_blur", "err_spatter",
                                                "err_saturate")) in row
    header = next(line for line in md.splitlines() if line.startswith("| model"))
    assert header.index("ImageNet-C mCE / rel. mCE ours") < header.index("ImageNet-C extras (not in mCE) ours") \
        < header.index("ImageNet-R ours")
    assert paths["corruptions"].stat().st_size > 1000   # CE per corruption, error per severity
    assert evals["imagenet_c"]["err_severity_5"] == pytest.approx(
        np.mean([evals[f"imagenet_c/{c}/5"]["top1_err"] for c in CORRUPTIONS]))


def test_evaluation_only_needs_starting_weights_and_known_corruptions():
    from helpers import cli
    out = cli("sweep", "robustness_imagenet", "--dry-run", "--scale", "full")
    assert "3 cells" in out and "model.name=resnet50_ibn_b" in out and "GPU-hours" in out
    with pytest.raises(AssertionError) as e:
        cli("sweep", "robustness_imagenet", "--dry-run", "model.pretrained=false")
    assert "trainer.max_epochs" in str(e.value) and "model.pretrained=true or model.pretrained_file" in str(e.value)
    with pytest.raises(AssertionError) as e:
        cli("sweep", "robustness_imagenet", "--dry-run",
            "data.val=[{name: c, dataset: imagenet_c, corruptions: [gausian_noise]}]")
    assert "data.val[0].corruptions" in str(e.value) and "did you mean 'gaussian_noise'" in str(e.value)
