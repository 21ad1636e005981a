"""Notebook experience: the %compozy magic, HTML display, plots."""
