"""Figure helpers shared by the stages that draw report figures."""

from __future__ import annotations


def title_room(fig) -> float:
    """Top of the tight-layout box that leaves about 0.4 inch for a figure title."""
    return 1.0 - 0.4 / fig.get_figheight()
