"""What one wake-up of a sleeping thread costs on this machine, the floor under any server's latency.

    python bench/bench_wakeup.py [--rounds 200]

A parent and a child process ping-pong one byte over pipes. The round trip is timed after the
parent has slept (both CPUs idle), after it has kept its CPU busy for as long as one decoded
token takes (the child's CPU sat idle meanwhile, as a server's event loop does while its worker
generates), and, busy again, with the child pinned to the parent's CPU or to the other one.
A 9P request crosses such a wake-up at least four times (client to event loop, loop to worker,
worker to loop, loop to client), so on a machine where a wake-up onto an idle CPU is slow, that
cost bounds how small the latency a server adds can get. This prints figures, not a verdict.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

BUSY_SECONDS = 0.013  # about one decoded token of the default model on one thread


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def round_trip_us(rounds: int, gap: str, parent_cpu: int | None, child_cpu: int | None) -> float:
    """Median microseconds of a one-byte ping-pong after each gap ("sleep" or "busy")."""
    to_child, from_parent = os.pipe()
    to_parent, from_child = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: echo until told to stop
        if child_cpu is not None:
            os.sched_setaffinity(0, {child_cpu})
        while (byte := os.read(to_child, 1)) not in (b"", b"q"):
            os.write(from_child, byte)
        os._exit(0)
    everywhere = os.sched_getaffinity(0)
    if parent_cpu is not None:
        os.sched_setaffinity(0, {parent_cpu})
    times = []
    try:
        for _ in range(rounds):
            if gap == "busy":
                _busy(BUSY_SECONDS)
            else:
                time.sleep(BUSY_SECONDS)
            started = time.perf_counter()
            os.write(from_parent, b"p")
            os.read(to_parent, 1)
            times.append(time.perf_counter() - started)
    finally:
        os.write(from_parent, b"q")
        os.waitpid(pid, 0)
        os.sched_setaffinity(0, everywhere)
        for fd in (to_child, from_parent, to_parent, from_child):
            os.close(fd)
    return statistics.median(times) * 1e6


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200, help="round trips per case")
    args = parser.parse_args(argv)
    if not hasattr(os, "fork") or not hasattr(os, "sched_setaffinity"):
        print("this measurement needs fork() and sched_setaffinity() (Linux)")
        return 1
    cpus = sorted(os.sched_getaffinity(0))
    print(f"{len(cpus)} CPU(s); one-byte pipe round trip between two processes, median of {args.rounds}:")
    idle = round_trip_us(args.rounds, "sleep", None, None)
    busy = round_trip_us(args.rounds, "busy", None, None)
    gap_ms = BUSY_SECONDS * 1e3
    print(f"  after sleeping {gap_ms:.0f} ms        {idle:8.1f} us")
    print(f"  after {gap_ms:.0f} ms busy             {busy:8.1f} us")
    if len(cpus) > 1:
        same = round_trip_us(args.rounds, "busy", cpus[0], cpus[0])
        other = round_trip_us(args.rounds, "busy", cpus[0], cpus[1])
        print(f"  busy, child on the same CPU  {same:8.1f} us")
        print(f"  busy, child on another CPU   {other:8.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
