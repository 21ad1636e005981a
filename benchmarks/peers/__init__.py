"""The pieces of ``benchmarks/bench_peers.py``: this project against its peers on one redis-server, in one run.

- ``base``: sizes, settings, the ``Subject`` interface and the shared test messages.
- ``raw``, ``ours``, ``llama_index``, ``langchain``, ``adapters``: the subjects, one module each.
- ``scenarios``: timing (interleaved, capped, probed), concurrent writers and the ``Bench`` run.
- ``report``: the Markdown report (machine, tables, semantics, notes).

Imported as the top-level package ``peers`` (``bench_peers.py`` puts benchmarks/ on ``sys.path``).
"""
