"""Typed, composable run configurations (omegaconf)."""
from .loader import CONFIG_DIR, ConfigError, compose, load_yaml, to_plain, to_yaml
from .schema import DatasetSpec, RunConfig

__all__ = ["compose", "ConfigError", "RunConfig", "DatasetSpec", "to_yaml", "to_plain", "load_yaml",
           "CONFIG_DIR"]
