"""rsgee: multi-source remote-sensing training archives and the models trained on them."""

__version__ = "0.1.0"

#: Public names imported on first use (attribute → module), so that ``import rsgee`` loads no xarray.
_LAZY = {"open_export": "rsgee.views", "ArchiveDataset": "rsgee.datasets", "ArchiveDataModule": "rsgee.datamodules",
         **{name: "rsgee.api" for name in (
    "Archive", "cache", "check", "evaluate_fusion", "evaluate_seg", "experiment_archive", "experiment_fusion",
    "experiment_seg", "export", "export_model", "generate", "load_model", "predict_fusion", "predict_seg",
    "source_catalog", "stac", "tile", "train_fusion", "train_seg")}}
#: Optional submodules imported on first use (``rsgee.maps`` needs the ``maps`` extra).
_SUBMODULES = ("maps",)


def __getattr__(name: str):
    if name not in _SUBMODULES and name not in _LAZY:
        raise AttributeError(f"module 'rsgee' has no attribute {name!r}")
    import importlib

    from rsgee.optional import MissingExtra, MissingExtraModule

    try:
        if name in _SUBMODULES:
            return importlib.import_module(f"rsgee.{name}")
        value = getattr(importlib.import_module(_LAZY[name]), name)
    except MissingExtra as exc:  # the one-line reason, and hasattr() is False
        raise MissingExtraModule(str(exc)) from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))
