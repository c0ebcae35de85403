"""Optional dependencies, guarded in one place.

The core (export, tile, check, cache) needs only rasterio and friends; training, evaluation,
generation and the demo need the ``train`` extra, map previews (``rsgee.maps``) the ``maps`` extra.
The models themselves, prediction and exported model folders (:mod:`rsgee.portable`) need only the
``predict`` extra (torch and safetensors, no Lightning); ``export_model(onnx=True)`` needs ``onnx``;
``--logger tensorboard|wandb|mlflow`` the extra of that name.
A missing extra is a one-line error naming the command that installs it, never an ``ImportError``
from deep inside a module.
"""

from __future__ import annotations

import importlib

from rsgee.errors import RsgeeError

#: Extra name → the modules it provides (as imported).
EXTRAS = {"train": ("torch", "lightning", "torchmetrics", "matplotlib"), "maps": ("geemap", "ipyleaflet"),
          "predict": ("torch", "safetensors"), "onnx": ("torch", "onnx"),
          "tensorboard": ("tensorboard",), "wandb": ("wandb",), "mlflow": ("mlflow",)}


class MissingExtra(RsgeeError):
    """An optional dependency group is not installed."""


class MissingExtraModule(MissingExtra, AttributeError):
    """``rsgee.<module>`` of a missing extra: the one-line reason, and ``hasattr`` is False (help, completion)."""


def require(extra: str) -> None:
    """Raise :class:`MissingExtra` unless every module of ``extra`` imports."""
    missing = []
    for module in EXTRAS[extra]:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise MissingExtra(f"this needs rsgee's optional '{extra}' dependencies ({', '.join(missing)} not installed); "
                           f"install them with: pip install 'rsgee[{extra}]'")
