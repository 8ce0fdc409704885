"""Normalization layers: IBN, Switchable Normalization, ghost-batch BN and the norm factory."""
from .batch_norm import GhostBatchNorm2d, InstanceNorm2d
from .batch_stats import estimate_batch_average_stats
from .ibn import IBN, IBNConcat, PartialInstanceNorm2d
from .kernels import kernel_for, kernel_report, use_kernel
from .norm import NORM_KINDS, canonical_norm, create_norm, get_norm_layer
from .se import SELayer
from .switch_norm import SwitchNorm2d

__all__ = [
    "IBN", "IBNConcat", "InstanceNorm2d", "PartialInstanceNorm2d", "SwitchNorm2d", "GhostBatchNorm2d", "SELayer",
    "NORM_KINDS", "canonical_norm", "create_norm", "get_norm_layer", "estimate_batch_average_stats",
    "kernel_for", "kernel_report", "use_kernel",
]
