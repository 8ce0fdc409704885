"""ibnnet: IBN-Net and Switchable Normalization, reproducible.

Importing the package registers its models in timm (``timm.list_models('*ibn*')``).
"""
__version__ = "0.1.0"

from . import layers, models  # noqa: E402,F401  (registration side effect)
from .models import create_model, list_models  # noqa: E402

__all__ = ["layers", "models", "create_model", "list_models", "__version__"]
