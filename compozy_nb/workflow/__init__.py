"""Workflows: runner, task executors, LLM providers."""
