"""What the operation log costs: ``mem.append(msg)`` with the log on against the same append with ``log:
{enabled: false}``, interleaved on the same server in the same run. Target: ≤ 1.10x (p50).

    python benchmarks/bench_oplog.py                 # a private redis-server
    python benchmarks/bench_oplog.py --redis URL     # an existing server (keys under a unique project name)
    python benchmarks/bench_oplog.py --quick

Both memories are in steady state like bench_memory.py's append row: ``max_messages: 1000``, 1,000 stored, so
every append also evicts one message into the archive (and the log records its id).
"""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path

import tiktoken
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RedisServer, Row, interleaved, make_contents, percentile, print_table

from compozy_nb.memory.instance import MemoryInstance
from compozy_nb.project import Project
from compozy_nb.tokens import ensure_offline_vocab, get_counter

TARGET = 1.10


def memory(project: Project, ref: str, log: bool) -> MemoryInstance:
    project.add_yaml(
        yaml.safe_dump(
            {
                "resource": "memory",
                "id": ref,
                "type": "message_count_based",
                "max_messages": 1000,
                "persistence": {"ttl": "24h"},
                "log": {"enabled": log},
            }
        )
    )
    return project.memory(ref, key=f"bench:{ref}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis", help="an existing Redis URL (default: a private redis-server)")
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    args = parser.parse_args(argv)
    ensure_offline_vocab()
    contents = make_contents(tiktoken.get_encoding(get_counter(None).encoding_name), 64, 50)
    server = None if args.redis else RedisServer().start()
    try:
        url = args.redis or server.url  # type: ignore[union-attr]
        project = Project(f"bench{uuid.uuid4().hex[:8]}", redis_url=url)
        on, off = memory(project, "log_on", True), memory(project, "log_off", False)
        for mem in (on, off):
            for start in range(0, 1000, 250):
                mem.append([{"role": "user", "content": contents[i % 64]} for i in range(start, start + 250)])
        turn = [0]

        def append(mem: MemoryInstance) -> None:
            turn[0] += 1
            mem.append({"role": "user", "content": contents[turn[0] % 64]})

        samples = interleaved(
            {"log on": lambda: append(on), "log off": lambda: append(off)},
            iterations=300 if args.quick else 2000,
        )
        assert on.log(limit=1), "the log-on memory has no events"
        row = Row(
            "append (log on)",
            percentile(samples["log on"], 0.5),
            percentile(samples["log on"], 0.99),
            "append (log off)",
            percentile(samples["log off"], 0.5),
            TARGET,
        )
        print_table([row])
        for mem in (on, off):
            for key in mem.layout.all_keys:
                project.backend.client.delete(key)
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
