"""Lightning modules for the two papers' tasks."""
from .classification import ClassificationTask
from .segmentation import SegmentationTask

TASKS = {"classification": ClassificationTask, "segmentation": SegmentationTask}

__all__ = ["ClassificationTask", "SegmentationTask", "TASKS"]
