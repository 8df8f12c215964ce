"""What every poolsim chart shares: status colours, a new-or-given Axes, notes and legends.

Private: the public names are re-exported by :mod:`poolsim.plot`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from poolsim.errors import ConfigError
from poolsim.records import Status

__all__ = [
    "DASH", "SLO_COLOR", "STATUS_COLORS", "TIMES", "legend_outside", "note", "require", "target",
]

#: One colour per job status, used by every chart (Okabe-Ito, colour-blind safe).
STATUS_COLORS: Mapping[Status, str] = MappingProxyType({
    Status.COMPLETED: "#009E73",
    Status.FAILED: "#D55E00",
    Status.TIMEOUT: "#E69F00",
    Status.REJECTED: "#CC79A7",
    Status.DROPPED: "#999999",
    Status.CANCELLED: "#000000",
    Status.RETURNED: "#0072B2",
    Status.RETRIED: "#56B4E9",
})
SLO_COLOR = "#C00000"
NOTE_COLOR = "0.4"
DASH, TIMES = "\u2013", "\u00d7"  # en dash, multiplication sign (ruff flags the literals)


def target(ax: Axes | None,
           figsize: tuple[float, float] = (8.0, 4.5)) -> tuple[Axes, Figure | Axes]:
    """The axes to draw into, and what to return: the new Figure, or the given Axes."""
    if ax is not None:
        return ax, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig.add_subplot(), fig


def note(ax: Axes, text: str) -> None:
    """Say in the middle of the axes why there is nothing to see."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center",
            color=NOTE_COLOR, fontsize="large")


def legend_outside(ax: Axes, title: str | None = None) -> None:
    """Put the legend right of the axes, where it cannot cover data."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small",
                  title=title, title_fontsize="small", frameon=False)


def require(frame: pd.DataFrame, argument: str, *columns: str) -> None:
    """Refuse a frame without ``columns`` with a ConfigError naming the missing one."""
    if not isinstance(frame, pd.DataFrame):
        raise ConfigError(argument, type(frame).__name__, "a pandas DataFrame")
    for column in columns:
        if column not in frame.columns:
            raise ConfigError(argument, column, "a frame with this column; it has "
                              + (", ".join(map(str, frame.columns)) or "no columns"))
