"""The imports a user expects, and ``import ibnnet`` staying cheap."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("pytorch_lightning", "lightning", "scipy", "torchmetrics", "omegaconf", "matplotlib", "ibnnet.data.datamodule",
         "ibnnet.tasks")

PROBE = r'''
import json, sys
heavy = HEAVY
import ibnnet
after_ibnnet = sorted(m for m in heavy if m in sys.modules)
import ibnnet.data
after_data = sorted(m for m in heavy if m in sys.modules)
from ibnnet.data import Cityscapes, GTA5, ImageNet, SyntheticScenes, SyntheticShapes
after_datasets = sorted(m for m in heavy if m in sys.modules)
from ibnnet.data import DataModule
print("REPORT" + json.dumps(dict(after_ibnnet=after_ibnnet, after_data=after_data, after_datasets=after_datasets,
                                 lightning="pytorch_lightning" in sys.modules)))
'''


def test_import_ibnnet_and_ibnnet_data_stay_light():
    code = PROBE.replace("HEAVY", repr(HEAVY))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.split("REPORT", 1)[1])
    assert report["after_ibnnet"] == [] and report["after_data"] == []
    assert report["after_datasets"] == ["scipy"]  # GTA5 reads its .mat split file with scipy.io
    assert report["lightning"]  # DataModule is a LightningDataModule


def test_data_exports():
    import ibnnet.data as data
    from ibnnet.data import (
        DATASETS,
        GTA5,
        Cityscapes,
        DataModule,
        ImageNet,
        SyntheticScenes,
        SyntheticShapes,
    )
    from ibnnet.data.datasets.cityscapes import Cityscapes as C
    from ibnnet.data.datamodule import DataModule as D
    from ibnnet.data.datasets.gta5 import GTA5 as G
    from ibnnet.data.datasets.imagenet import ImageNet as I
    from ibnnet.data.datasets.synthetic import SyntheticScenes as SC
    from ibnnet.data.datasets.synthetic import SyntheticShapes as SH
    assert (Cityscapes, GTA5, ImageNet, SyntheticShapes, SyntheticScenes, DataModule) == (C, G, I, SH, SC, D)
    assert {"builtin_cls", "builtin_seg", "imagenet", "cityscapes", "gta5"} <= set(DATASETS)
    assert {"Cityscapes", "GTA5", "ImageNet", "SyntheticShapes", "SyntheticScenes", "DataModule"} <= set(data.__all__)
    assert set(data.__all__) <= set(dir(data))
    with pytest.raises(AttributeError, match="has no attribute 'Kitti'"):
        data.Kitti
    with pytest.raises(ImportError):
        from ibnnet.data import Kitti  # noqa: F401
    shapes = SyntheticShapes(split="val", domain="synthetic", num_samples=2, seed=0, image_size=16)
    assert len(shapes) == 2


def test_layers_tasks_and_models_exports():
    import ibnnet
    from ibnnet.layers import IBN, SwitchNorm2d
    from ibnnet.models import ResNet, create_model
    from ibnnet.tasks import ClassificationTask, SegmentationTask
    assert IBN.__module__ == "ibnnet.layers.ibn" and SwitchNorm2d.__module__ == "ibnnet.layers.switch_norm"
    assert ClassificationTask.__name__ == "ClassificationTask" and SegmentationTask.__name__ == "SegmentationTask"
    assert ibnnet.create_model is create_model and isinstance(create_model("resnet18_bn"), ResNet)
