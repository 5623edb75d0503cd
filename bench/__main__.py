"""``python -m bench [name ...] [--quick]``: run benchmarks, print their reports.

Each benchmark is a module ``bench.<name>`` with ``run(quick: bool, results_dir: Path)
-> str`` that starts what it measures, stops it again, writes its report to
``results_dir`` and returns it. Add one by adding it to :data:`BENCHMARKS`.

Every child process is stopped on the way out, also on Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from pathlib import Path
from types import FrameType

from bench.servers import reap_children

BENCHMARKS: dict[str, str] = {
    "relay": "bench.relay",  # tutorial in-process echo vs. gateway -> NATS -> codec
    "capacity": "bench.capacity",  # RSS per idle connection: gateway vs bare uvicorn
    "files": "bench.files",  # 100 MiB up/down via gateway -> NATS -> object store vs raw echo
    "fanout": "bench.fanout",  # one room, 100 members: switchboard vs tutorial vs socket.io
}
RESULTS = Path(__file__).resolve().parent / "results"


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Run benchmarks and print their reports."
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="name",
        help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short windows, for a smoke test; results go to <name>.quick.txt",
    )
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    names = list(dict.fromkeys(args.names)) or list(BENCHMARKS)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    try:
        for name in names:
            module = importlib.import_module(BENCHMARKS[name])
            text = module.run(quick=args.quick, results_dir=RESULTS)
            print(text, flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted; stopping every child process", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the clean-up finish
        leftover = reap_children()
        if leftover:
            print(f"stopped leftover child processes {leftover}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
