"""PNG figures: fusion sample grids (land cover, SAR, generated and real Sentinel-2 in RGB and NRG).

Figures are :class:`matplotlib.figure.Figure` objects saved straight to PNG, never pyplot's: they draw on
headless machines, and a notebook's backend and open figures stay as they were.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from rsgee.geotiff import atomic_path

#: Dynamic World's own class colours (water … snow_and_ice), plus black for don't-care/nodata.
DW_COLOURS = ("#419bdf", "#397d49", "#88b053", "#7a87c6", "#e49635", "#dfc35a", "#c4281b", "#a59b8f", "#b39fe1",
              "#000000")
#: Reflectance shown at full brightness (a usual 2–3× stretch for Sentinel-2 surface reflectance).
DISPLAY_MAX = 0.3


def _subplots(rows: int = 1, columns: int = 1, *, figsize: tuple[float, float], squeeze: bool = True):
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, columns, squeeze=squeeze)


def land_cover_rgb(labels: np.ndarray) -> np.ndarray:
    """(H, W) class indices 0–9 (9 = don't care) → (H, W, 3) colours."""
    from matplotlib.colors import to_rgb

    palette = np.array([to_rgb(c) for c in DW_COLOURS])
    return palette[np.clip(labels, 0, len(DW_COLOURS) - 1)]


def reflectance_rgb(reflectance: np.ndarray, bands: Sequence[int]) -> np.ndarray:
    """(4, H, W) reflectance B2, B3, B4, B8 → (H, W, 3) display image of the given band indices."""
    return np.clip(np.stack([reflectance[b] for b in bands], axis=-1) / DISPLAY_MAX, 0.0, 1.0)


def fusion_grid(path: Path, *, generated: np.ndarray, real: np.ndarray, labels: np.ndarray | None,
                sar_vv: np.ndarray | None, titles: Sequence[str], suptitle: str) -> Path:
    """One row per sample: land cover, SAR VV, generated/real RGB, generated/real NRG false colour.

    Args:
        generated, real: (N, 4, H, W) reflectance in [0, 1].
        labels: (N, H, W) class indices (9 = don't care), or None when land cover is not an input.
        sar_vv: (N, H, W) VV in [0, 1] (model scaling), or None when SAR is not an input.
    """
    columns = [("land cover", labels is not None), ("SAR VV", sar_vv is not None), ("generated RGB", True),
               ("real RGB", True), ("generated NRG", True), ("real NRG", True)]
    shown = [name for name, present in columns if present]
    rows = len(generated)
    fig, axes = _subplots(rows, len(shown), figsize=(2.2 * len(shown), 2.2 * rows + 0.4), squeeze=False)
    for r in range(rows):
        images = {
            "land cover": land_cover_rgb(labels[r]) if labels is not None else None,
            "SAR VV": sar_vv[r] if sar_vv is not None else None,
            "generated RGB": reflectance_rgb(generated[r], (2, 1, 0)),
            "real RGB": reflectance_rgb(real[r], (2, 1, 0)),
            "generated NRG": reflectance_rgb(generated[r], (3, 2, 1)),
            "real NRG": reflectance_rgb(real[r], (3, 2, 1)),
        }
        for c, name in enumerate(shown):
            ax = axes[r][c]
            ax.imshow(images[name], cmap="gray" if name == "SAR VV" else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
            if c == 0:
                ax.set_ylabel(titles[r], fontsize=6)
    fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def curves(path: Path, series: dict[str, tuple[Sequence[int], Sequence[float]]], *, ylabel: str, title: str) -> Path:
    """Line plot of one value per epoch for several runs (the paper's Figure 8)."""
    fig, ax = _subplots(figsize=(6, 4))
    for label, (epochs, values) in series.items():
        ax.plot(list(epochs), list(values), marker="o", markersize=3, label=label)
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def confusion_figure(path: Path, matrix: np.ndarray, classes: Sequence[str], title: str) -> Path:
    """Row-normalised confusion matrix (rows = truth) with pixel counts in the cells."""
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=float), where=rows > 0)
    fig, ax = _subplots(figsize=(6.5, 5.5))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for r in range(len(classes)):
        for c in range(len(classes)):
            if matrix[r, c]:
                ax.text(c, r, f"{share[r, c]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if share[r, c] > 0.6 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def prediction_grid(path: Path, *, reflectance: np.ndarray, truth: np.ndarray, predictions: dict[str, np.ndarray],
                    titles: Sequence[str], suptitle: str) -> Path:
    """Rows of test tiles: Sentinel-2 RGB, true land cover, then each run's prediction (Figure 9)."""
    columns = ["Sentinel-2 RGB", "land cover (truth)", *predictions]
    fig, axes = _subplots(len(truth), len(columns), figsize=(2.2 * len(columns), 2.2 * len(truth) + 0.4),
                          squeeze=False)
    for r in range(len(truth)):
        images = [reflectance_rgb(reflectance[r], (2, 1, 0)), land_cover_rgb(truth[r])]
        images += [land_cover_rgb(p[r]) for p in predictions.values()]
        for c, (name, image) in enumerate(zip(columns, images)):
            ax = axes[r][c]
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=7)
            if c == 0:
                ax.set_ylabel(titles[r], fontsize=6)
    fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    return path
