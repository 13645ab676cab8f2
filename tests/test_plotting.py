"""The book's figure style: opaque, high-contrast, applied by one call."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from ntklib import plotting  # noqa: E402


def test_contrast_ratio_matches_wcag_reference_values():
    assert plotting.contrast_ratio("#000000", "#ffffff") == pytest.approx(21.0)
    assert plotting.contrast_ratio("#ffffff", "#ffffff") == pytest.approx(1.0)
    # WCAG's own example: #777777 on white is just under 4.5:1.
    assert plotting.contrast_ratio("#777777", "#ffffff") == pytest.approx(4.48, abs=0.01)
    assert plotting.contrast_ratio("#ffffff", "#777777") == plotting.contrast_ratio("#777777", "#ffffff")


def test_every_line_colour_stays_visible_on_the_figure_background():
    for colour in plotting.PALETTE:
        assert plotting.contrast_ratio(colour, plotting.PAPER) >= 3.0, colour
    assert plotting.contrast_ratio(plotting.INK, plotting.PAPER) >= 7.0
    assert len(set(plotting.PALETTE)) == len(plotting.PALETTE)


def test_style_context_gives_opaque_figures_and_restores_settings():
    before = dict(matplotlib.rcParams)
    with plotting.book_style():
        fig, ax = plt.subplots()
        (line,) = ax.plot([0, 1], [0, 1])
        assert to_hex(line.get_color()) == plotting.PALETTE[0].lower()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        plt.close(fig)
    assert dict(matplotlib.rcParams) == before
    buffer.seek(0)
    image = plt.imread(buffer)  # (h, w, 4) RGBA floats
    assert image.shape[2] == 4 and image[..., 3].min() == 1.0, "the figure must not be transparent"
    assert image[0, 0, :3].tolist() == [1.0, 1.0, 1.0]  # corner: white paper


def test_use_book_style_sets_the_process_style():
    with matplotlib.rc_context():
        plotting.use_book_style()
        assert matplotlib.rcParams["savefig.transparent"] is False
        assert to_hex(matplotlib.rcParams["figure.facecolor"]) == plotting.PAPER
        assert [to_hex(c) for c in matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]] == [
            c.lower() for c in plotting.PALETTE
        ]
