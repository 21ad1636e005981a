"""The what-if simulator: replay conversations under several memory configurations and compare what the agent
would have been sent, what it would have cost and what it would have forgotten.

    sim = compozy_nb.simulate(conversations, [small, large], read={"max_tokens": 1000})
    sim.summary      # one row per resource
    sim.turns        # one row per conversation x agent turn x resource
    sim.plot()
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from compozy_nb.backends import EMBEDDED_URL, connect
from compozy_nb.simulation.datasets import synthetic_conversations
from compozy_nb.simulation.frames import to_read_options, to_resources
from compozy_nb.simulation.replay import Conversation, Outcome, Task, conversations_from_frame, run_task
from compozy_nb.simulation.result import Simulation

__all__ = ["Simulation", "simulate", "synthetic_conversations"]

_IN_PROCESS_MESSAGES = 4000  # below this many messages in all, starting processes costs more than it saves


def simulate(
    conversations: Any,
    resources: Sequence[Any],
    *,
    read: Mapping[str, Any] | None = None,
    price_per_1k_tokens: float | None = None,
    backend: str = EMBEDDED_URL,
    max_workers: int | None = None,
    progress: bool = True,
) -> Simulation:
    """Replay every conversation under every memory resource and measure what the agent was sent.

    Each conversation is replayed on its own throwaway keys, by the engine itself (the same Lua scripts): the
    messages before each assistant message are appended (one append), then the agent reads its memory with
    ``read``. Evictions, summaries (rule-based: no LLM is called) and redaction happen as they would in
    production. Ids are derived from the input, so the same input gives the same DataFrames.

    Args:
        conversations: A DataFrame (or list of dicts) with ``conversation_id``, ``role``, ``content`` and
            optionally ``turn`` (order within a conversation), ``id``, ``name``, ``tool_calls``,
            ``tool_call_id``.
        resources: Memory resources: SDK builders, models or YAML text, each with its own id.
        read: What the agent reads before each assistant message: ``{"max_tokens": N}``, ``{"last": N}``, or
            None for everything stored.
        price_per_1k_tokens: Price of 1,000 tokens sent; gives the ``cost`` column.
        backend: ``embedded://`` (default; a private in-process store per worker) or a Redis URL, used under
            a unique namespace that is deleted afterwards.
        max_workers: Processes to use (default: one per CPU for large inputs; small inputs run in this
            process). ``1`` never starts a process.
        progress: Show a progress bar (tqdm).

    Returns:
        A :class:`Simulation` with ``summary``, ``turns``, ``conversations`` and ``plot()``.

    Raises:
        ConfigError: an invalid resource or read option.
        InvalidPayloadError: conversations without the needed columns, or messages the engine rejects.
        BackendError: a Redis URL that cannot be reached.
    """
    models = to_resources(resources)
    options = to_read_options(read)
    replays = conversations_from_frame(conversations)
    if not backend.startswith("embedded://"):
        connect(backend).close()  # an unreachable server is reported once, here
    workers = _workers(max_workers, replays)
    tasks = [
        Task(model, chunk, options, backend)
        for model in models
        for chunk in _chunks(replays, 1 if workers == 1 else workers * 4)
    ]
    outcomes = _run(tasks, workers, progress)
    return Simulation.from_outcomes(models, tasks, outcomes, read=options, price_per_1k_tokens=price_per_1k_tokens)


def _workers(max_workers: int | None, replays: Sequence[Conversation]) -> int:
    if max_workers is not None:
        if max_workers < 1:
            from compozy_nb.errors import ConfigError

            raise ConfigError("max_workers must be at least 1", operation="simulate", field="max_workers")
        return max_workers
    if sum(len(c.messages) for c in replays) < _IN_PROCESS_MESSAGES:
        return 1
    return os.cpu_count() or 1


def _chunks(replays: Sequence[Conversation], parts: int) -> Iterator[tuple[Conversation, ...]]:
    """Split into about ``parts`` chunks of similar size (by messages), keeping the input order."""
    total = sum(len(c.messages) for c in replays)
    target = max(1, total // max(1, parts))
    chunk: list[Conversation] = []
    size = 0
    for conversation in replays:
        chunk.append(conversation)
        size += len(conversation.messages)
        if size >= target:
            yield tuple(chunk)
            chunk, size = [], 0
    if chunk:
        yield tuple(chunk)


def _run(tasks: Sequence[Task], workers: int, progress: bool) -> list[Outcome]:
    bar = _progress(tasks, progress)
    try:
        if workers == 1:
            outcomes = []
            for task in tasks:
                outcomes.append(run_task(task))
                _advance(bar, task)
            return outcomes
        import multiprocessing

        # fork starts in milliseconds; workers open their own connections and touch no inherited client
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [pool.submit(run_task, task) for task in tasks]
            for future, task in zip(futures, tasks, strict=True):
                future.add_done_callback(_advancer(bar, task))
            return [_result(f) for f in futures]
    finally:
        if bar is not None:
            bar.close()


def _advancer(bar: Any, task: Task) -> Any:
    def advance(_future: Future[Outcome]) -> None:
        _advance(bar, task)

    return advance


def _result(future: Future[Outcome]) -> Outcome:
    return future.result()


def _progress(tasks: Sequence[Task], show: bool) -> Any:
    if not show:
        return None
    from tqdm.auto import tqdm

    total = sum(len(c.messages) for t in tasks for c in t.conversations)
    return tqdm(total=total, desc="simulate", unit="msg")


def _advance(bar: Any, task: Task) -> None:
    if bar is not None:
        bar.update(sum(len(c.messages) for c in task.conversations))
