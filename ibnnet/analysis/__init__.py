"""Analyses of trained models: feature divergence between image domains (IBN-Net sec. 4.3, Fig. 5)."""
from .divergence import (
    DEFAULT_REL_EPS,
    ChannelStats,
    ImageSet,
    channel_statistics,
    divergence_report,
    feature_divergence,
    main_path_relus,
    parse_image_set,
    run_divergence,
    symmetric_kl,
)

__all__ = [
    "DEFAULT_REL_EPS", "ChannelStats", "ImageSet", "channel_statistics", "divergence_report",
    "feature_divergence", "main_path_relus", "parse_image_set", "run_divergence", "symmetric_kl",
]
