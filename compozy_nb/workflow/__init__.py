"""Workflows: the runner (written once as steps, driven sync or async) and the LLM providers."""

__all__ = ["providers", "runner"]
