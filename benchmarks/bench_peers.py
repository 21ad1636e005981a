"""This project against its peers on one redis-server, in one run: raw redis-py, LlamaIndex and LangChain.

Run ``python benchmarks/bench_peers.py`` (full, about 3-5 minutes; writes benchmarks/RESULTS.md),
``--quick`` (about a minute; prints only, unless ``--output`` is given), ``--redis URL`` to use an existing
server instead of starting one, ``--output PATH`` to write the Markdown report elsewhere.

Subjects, each used through its documented API:

- ``raw``: plain redis-py (hiredis): RPUSH + PEXPIRE in one pipeline, LRANGE + ``json.loads``. The baseline
  of every ratio.
- ``compozy_nb``: this project, ``Project.memory(ref, key)`` of a ``buffer`` resource (no limit, ttl 24h):
  ``append(msg)``, ``read(last=20)``, ``read(max_tokens=1000)``.
- ``llamaindex``: ``RedisChatStore(ttl=86400)`` + ``ChatMemoryBuffer.from_defaults(token_limit=1000)``:
  ``memory.put(ChatMessage)``, ``store.get_messages(key)[-20:]``, ``memory.get()``.
- ``langchain``: langchain-community ``RedisChatMessageHistory(ttl=86400)`` + langchain-core
  ``trim_messages(history.messages, strategy="last", max_tokens=1000, token_counter=<tiktoken counter of the
  LangChain how-to guide>, start_on="human", include_system=True)``: ``add_message``, ``messages[-20:]``.
- ``lc-adapter`` / ``li-adapter`` / ``li-store``: this project's LangChain and LlamaIndex adapters, the same
  operations through the frameworks' interfaces (see benchmarks/peers/adapters.py).

Operations at 100 / 1,000 / 10,000 stored messages (the same deterministic ~50-token texts for every subject,
roles alternating user/assistant): read last 20, read within a 1,000-token budget, append one message; then
8 concurrent writer processes x N appends to one fresh key each (lost / duplicated / out-of-order counts and
throughput). Peers that are not installed, or fail to set up offline, are reported as skipped.

Timing: ``time.perf_counter_ns`` per call, cases of one operation interleaved in blocks of 10 calls (forward
and reverse order in turn). A case stops sampling at its iteration count or when its accumulated time reaches
a cap (slow peers get fewer samples: the sample count is in the report). A budget read is first tried once in
a forked child with a timeout, so a case that would take minutes is reported as timed out instead of run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RedisServer
from peers.base import BUDGET, FULL, LAST, QUICK, SIZES, WRITERS
from peers.report import loadavg, machine, report
from peers.scenarios import Bench

HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis", metavar="URL", help="use this Redis instead of starting a redis-server")
    parser.add_argument("--quick", action="store_true", help="a ~1 minute smoke run (fewer samples, caps)")
    parser.add_argument(
        "--output",
        metavar="PATH",
        help="write the Markdown report here (default: benchmarks/RESULTS.md for a full run, none for --quick)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = QUICK if args.quick else FULL
    mode = "quick" if args.quick else "full"
    output = Path(args.output) if args.output else (None if args.quick else HERE / "RESULTS.md")
    started = time.perf_counter()
    load_start = loadavg()
    server = None if args.redis else RedisServer().start()
    url = args.redis or server.url  # type: ignore[union-attr]
    try:
        bench = Bench(url, settings)
        try:
            for s in bench.subjects:
                print(f"{s.label}: {'skipped — ' + s.skipped if s.skipped else 'ready'}", flush=True)
            print(f"- fill {', '.join(f'{n:,}' for n in SIZES)} messages per subject ...", flush=True)
            bench.fill()
            print(f"- read last {LAST} ...", flush=True)
            bench.reads(f"read last {LAST}", "read_last")
            print(f"- read within {BUDGET:,} tokens ...", flush=True)
            bench.reads(f"read ≤ {BUDGET:,} tokens", "read_budget")
            print("- append ...", flush=True)
            bench.appends()
            print(f"- {WRITERS} concurrent writers x {settings.appends_per_writer} appends ...", flush=True)
            bench.concurrency()
            lines = machine(bench.raw.client, load_start, loadavg())
            text = report(bench, settings, mode, lines, time.perf_counter() - started)
        finally:
            bench.cleanup()
    finally:
        if server is not None:
            server.stop()
    print()
    print(text)
    if output is not None:
        output.write_text(text, encoding="utf-8")
        print(f"written to {output}")
    print(f"total {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
