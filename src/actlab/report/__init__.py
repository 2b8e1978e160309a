"""Plots (matplotlib PNG) and self-contained offline HTML pages."""

from .html import Page, data_uri, esc, tok
from .plots import heatmaps, save_figure

__all__ = ["Page", "data_uri", "esc", "heatmaps", "save_figure", "tok"]
