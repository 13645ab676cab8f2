"""One figure style for the whole book: ``from ntklib import plotting; plotting.use_book_style()``.

Figures sit on the page as PNG images, over a light or a dark theme. A transparent figure would
put dark text on a dark page, so every figure is drawn on an opaque white card with dark ink,
and its line colours (Okabe & Ito's colour-blind-safe palette, darkened where needed) keep a
WCAG contrast of at least 3:1 against that white, whichever theme surrounds it.

matplotlib is imported here only: ``import ntklib`` does not need it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

# Okabe-Ito, with yellow and sky blue darkened so that thin lines stay visible on white.
PALETTE: tuple[str, ...] = (
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#B07800",  # dark yellow
    "#3A87B8",  # dark sky blue
    "#000000",  # black
)
INK = "#1f1f1f"
PAPER = "#ffffff"
GRID = "#d9d9d9"

BOOK_STYLE: dict[str, object] = {
    "figure.figsize": (7.0, 4.0),
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "figure.facecolor": PAPER,
    "savefig.facecolor": PAPER,
    "savefig.transparent": False,
    "axes.facecolor": PAPER,
    "axes.edgecolor": INK,
    "axes.labelcolor": INK,
    "axes.titlesize": "medium",
    "axes.labelsize": "medium",
    "axes.grid": True,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "grid.color": GRID,
    "grid.linewidth": 0.6,
    "text.color": INK,
    "xtick.color": INK,
    "ytick.color": INK,
    "legend.frameon": True,
    "legend.facecolor": PAPER,
    "legend.edgecolor": GRID,
    "legend.fontsize": "small",
    "lines.linewidth": 1.8,
    "lines.markersize": 5.0,
    "image.cmap": "viridis",
    "font.size": 11.0,
}


def _style() -> dict[str, object]:
    """BOOK_STYLE plus the line colours (a cycler object, which needs matplotlib)."""
    from cycler import cycler

    return {**BOOK_STYLE, "axes.prop_cycle": cycler(color=list(PALETTE))}


def use_book_style() -> None:
    """Apply the book's style to every later matplotlib figure of this process."""
    import matplotlib.pyplot as plt

    plt.style.use(_style())


@contextmanager
def book_style() -> Iterator[None]:
    """The book's style for the figures drawn inside a ``with`` block only."""
    import matplotlib.pyplot as plt

    with plt.style.context(_style()):
        yield


def contrast_ratio(foreground: str, background: str) -> float:
    """WCAG 2 contrast ratio (L1 + 0.05) / (L2 + 0.05) of two colours, from 1 to 21."""
    from matplotlib.colors import to_rgb

    def luminance(colour: str) -> float:
        channels = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in to_rgb(colour)]
        return 0.2126 * channels[0] + 0.7152 * channels[1] + 0.0722 * channels[2]

    high, low = sorted((luminance(foreground), luminance(background)), reverse=True)
    return (high + 0.05) / (low + 0.05)
