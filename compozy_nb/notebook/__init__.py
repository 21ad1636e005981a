"""Notebook experience: the ``%compozy`` magic, HTML views, DataFrames, plots and the inspector."""

__all__ = ["display", "frames", "inspector", "log_plot", "magics", "plot", "views"]
