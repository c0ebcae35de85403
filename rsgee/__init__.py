"""rsgee: multi-source remote-sensing training archives and the models trained on them."""

__version__ = "0.1.0"

#: Public names imported on first use (attribute → module), so that ``import rsgee`` loads no xarray.
_LAZY = {"open_export": "rsgee.views", **{name: "rsgee.api" for name in (
    "Archive", "cache", "check", "evaluate_fusion", "evaluate_seg", "experiment_archive", "experiment_fusion",
    "experiment_seg", "export", "generate", "predict_fusion", "predict_seg", "source_catalog", "stac", "tile",
    "train_fusion", "train_seg")}}
#: Optional submodules imported on first use (``rsgee.maps`` needs the ``maps`` extra).
_SUBMODULES = ("maps",)


def __getattr__(name: str):
    if name in _SUBMODULES:
        import importlib

        from rsgee.optional import MissingExtra, MissingExtraModule

        try:
            return importlib.import_module(f"rsgee.{name}")
        except MissingExtra as exc:
            raise MissingExtraModule(str(exc)) from None
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rsgee' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))
