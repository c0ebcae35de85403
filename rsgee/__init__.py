"""rsgee: multi-source remote-sensing training archives and the models trained on them."""

__version__ = "0.1.0"
