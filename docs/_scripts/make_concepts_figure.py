"""Draw the figure of docs/concepts.rst: why FuseMix shares lambda and the pairing across modalities.

Run from the repository root after changing the figure, and commit the SVG::

    python docs/_scripts/make_concepts_figure.py            # writes docs/_static/fusemix_shared_lambda.svg
    python docs/_scripts/make_concepts_figure.py out.svg    # or anywhere else

The output is deterministic (fixed seed, no date in the metadata), so an
unchanged figure gives an unchanged file with the same matplotlib version.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import ConnectionPatch  # noqa: E402

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "_static" / "fusemix_shared_lambda.svg"
LAM = 0.3  # the lambda applied to the image latents (and, in the top row, to the text latents too)
LAM_OTHER = 0.8  # an independent lambda for the text latents (bottom row)
BOX = {"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.85}
BLUE, ORANGE, GREEN, RED, GREY = "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#b0b0b0"


def _latent_spaces(seed: int = 3) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Two 2-D 'latent spaces' of the same 10 concepts seen through different encoders, and two far-apart rows."""
    rng = np.random.default_rng(seed)
    concepts = rng.uniform(-1.0, 1.0, size=(10, 2))
    image = concepts @ np.array([[1.0, 0.35], [-0.2, 0.9]]) + 0.04 * rng.normal(size=(10, 2))
    angle = np.deg2rad(120)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    text = 0.9 * concepts @ rotation + 0.04 * rng.normal(size=(10, 2))
    distance = sum(np.linalg.norm(space[:, None] - space[None], axis=-1) for space in (image, text))
    i, j = np.unravel_index(np.argmax(distance), distance.shape)
    return image, text, int(i), int(j)


def _panel(ax: plt.Axes, points: np.ndarray, i: int, j: int, lam: float, name: str, title: str) -> np.ndarray:
    """Scatter one latent space, highlight rows i and j, and mark their mixture; return the mixed point."""
    others = np.delete(np.arange(len(points)), [i, j])
    ax.scatter(*points[others].T, s=18, color=GREY, zorder=1)
    mixed = lam * points[i] + (1 - lam) * points[j]
    ax.plot(*np.stack([points[i], points[j]]).T, ls="--", lw=1, color="#555555", zorder=2)
    ax.scatter(*points[i], s=60, color=BLUE, zorder=3)
    ax.scatter(*points[j], s=60, color=ORANGE, zorder=3)
    ax.scatter(*mixed, s=170, marker="*", color="#6a3d9a", zorder=4)
    ax.annotate(f"${name}_i$", points[i], xytext=(6, 6), textcoords="offset points", color=BLUE, fontsize=11)
    ax.annotate(f"${name}_j$", points[j], xytext=(6, 6), textcoords="offset points", color=ORANGE, fontsize=11)
    label = rf"$\tilde{{{name}}} = {lam:g}\,{name}_i + {1 - lam:g}\,{name}_j$"
    ax.annotate(label, mixed, xytext=(10, -18), textcoords="offset points", color="#6a3d9a", fontsize=10, bbox=BOX)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    low, high = points.min(axis=0), points.max(axis=0)
    ax.set_xlim(low[0] - 0.3, high[0] + 1.1)
    ax.set_ylim(low[1] - 0.4, high[1] + 0.3)
    return mixed


def _link(fig: plt.Figure, ax_a: plt.Axes, a: np.ndarray, ax_b: plt.Axes, b: np.ndarray, **style: object) -> None:
    """Draw a line from point ``a`` in ``ax_a`` to point ``b`` in ``ax_b`` (a positive pair)."""
    fig.add_artist(ConnectionPatch(xyA=a, coordsA=ax_a.transData, xyB=b, coordsB=ax_b.transData, **style))


def draw(output: Path) -> None:
    """Draw the two rows (shared lambda, independent lambda) and save the figure to ``output``."""
    plt.rcParams.update({"svg.hashsalt": "fusemix-docs", "font.size": 10})
    image, text, i, j = _latent_spaces()
    fig, axes = plt.subplots(2, 2, figsize=(9.0, 6.6))
    rows = (
        (LAM, GREEN, "shared $\\lambda$ and pairing (FuseMix): the mixed latents are still a positive pair"),
        (LAM_OTHER, RED, "independent $\\lambda$ per modality (ablation): the mixed pair no longer matches"),
    )
    for (ax_img, ax_txt), (text_lam, color, caption) in zip(axes, rows):
        x_mix = _panel(ax_img, image, i, j, LAM, "x", "image latent space (frozen encoder 1)")
        y_mix = _panel(ax_txt, text, i, j, text_lam, "y", "text latent space (frozen encoder 2)")
        _link(fig, ax_img, image[i], ax_txt, text[i], color=BLUE, lw=0.8, alpha=0.5)
        _link(fig, ax_img, image[j], ax_txt, text[j], color=ORANGE, lw=0.8, alpha=0.5)
        _link(fig, ax_img, x_mix, ax_txt, y_mix, color=color, lw=2.2)
        if color == RED:  # where the partner of x_mix would be: the same lambda on the text side
            partner = LAM * text[i] + (1 - LAM) * text[j]
            ax_txt.scatter(*partner, s=170, marker="*", facecolor="none", edgecolor="#6a3d9a", zorder=4)
            ax_txt.annotate(
                rf"true partner of $\tilde{{x}}$ ($\lambda={LAM:g}$)",
                partner,
                xytext=(-10, 12),
                textcoords="offset points",
                fontsize=9,
                color="#6a3d9a",
                ha="right",
                bbox=BOX,
            )
        ax_img.text(0.0, 1.16, caption, transform=ax_img.transAxes, fontsize=11, color=color, weight="bold")
    fig.subplots_adjust(left=0.02, right=0.98, top=0.9, bottom=0.02, wspace=0.25, hspace=0.35)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, format=output.suffix.lstrip(".") or "svg", metadata={"Date": None})
    plt.close(fig)


if __name__ == "__main__":
    draw(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUTPUT)
