"""Shared timing and reporting for the benchmark scripts."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Result",
    "Side",
    "before_after_table",
    "build_callgrind_helper",
    "callgrind_command",
    "callgrind_totals",
    "run_under_callgrind",
    "compare_with_before",
    "export_src",
    "interleaved_best",
    "print_table",
    "serve_cases",
    "source_path",
    "time_per_call",
]

SERVE_FLAG = "--serve-cases"
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Result:
    name: str
    ns_per_call: float


def time_per_call(fn: Callable[[], object], *, number: int = 100_000, repeat: int = 5) -> float:
    """Nanoseconds per call: the best of ``repeat`` runs of ``number`` calls, after a warm-up."""
    for _ in range(min(number, 1000)):
        fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter_ns()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter_ns() - start) / number)
    return best


def print_table(
    title: str,
    results: Sequence[Result],
    *,
    baseline: str,
    peer: str | None = None,
    overhead_over: str | None = None,
) -> None:
    """Print ns/call, the ratio to ``baseline`` and to ``peer``, and overhead above a bare call."""
    by_name = {r.name: r.ns_per_call for r in results}
    print(f"\n{title}")
    header = f"{'case':<44} {'ns/call':>10} {'vs ' + baseline:>16}"
    if peer:
        header += f" {'vs ' + peer:>16}"
    if overhead_over:
        header += f" {'overhead ns':>12}"
    print(header)
    print("-" * len(header))
    for result in results:
        line = f"{result.name:<44} {result.ns_per_call:>10.1f} "
        line += f"{result.ns_per_call / by_name[baseline]:>15.2f}x"
        if peer:
            line += f" {result.ns_per_call / by_name[peer]:>15.2f}x"
        if overhead_over:
            line += f" {result.ns_per_call - by_name[overhead_over]:>12.1f}"
        print(line)


# -- before/after in one run ---------------------------------------------------------------------
#
# ``--before SRC`` runs the same cases against an older scalekit in one run: the script
# starts two worker processes of itself (``--serve-cases``), one importing scalekit from
# SRC and one from this checkout, and asks them in turn for one measurement of each case,
# round after round (interleaved: a noisy neighbour slows both sides alike); the best of
# the rounds is kept. The peer's cases run in both workers; the tables show the "after"
# worker's figure for them.


def export_src(rev: str, into: Path) -> Path:
    """``git archive`` the ``src`` of ``rev`` into ``into``; return the extracted ``src``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev, "src"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def source_path(spec: str, scratch: Path) -> Path:
    """The folder to put on PYTHONPATH for ``spec``: a checkout (its ``src``), or a git
    rev exported into ``scratch``."""
    path = Path(spec)
    if path.is_dir():
        return path / "src" if (path / "src" / "scalekit").is_dir() else path
    return export_src(spec, scratch)


class Side:
    """One worker process that measures cases on request (its other end: :func:`serve_cases`).

    ``command`` starts it, with ``PYTHONPATH`` led by ``src`` (the scalekit it
    must import, checked on start) and ``env`` added; :meth:`of_script` starts
    the calling script itself with ``--serve-cases``.
    """

    def __init__(
        self, label: str, src: Path, command: Sequence[str], env: Mapping[str, str] | None = None
    ) -> None:
        self.label = label
        environ = {**os.environ, **(env or {})}
        environ["PYTHONPATH"] = os.pathsep.join([str(src), environ.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
        self._proc = subprocess.Popen(
            list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=environ, text=True
        )
        where = Path(str(self._ask({"op": "scalekit"})))
        if where.resolve() != (src / "scalekit").resolve():
            self.close()
            raise RuntimeError(f"the {label} worker imported scalekit from {where}, not {src}")
        self.names: list[str] = self._ask({"op": "names"})  # type: ignore[assignment]

    @classmethod
    def of_script(cls, label: str, src: Path, script: str, argv: Sequence[str]) -> Side:
        """``script`` (the caller's own file) as a worker: ``script *argv --serve-cases``."""
        return cls(label, src, [sys.executable, script, *argv, SERVE_FLAG])

    def _ask(self, request: dict[str, object]) -> object:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.label} worker exited")
        return json.loads(line)

    def measure(self, case: str, number: int) -> float | None:
        """One measurement of ``number`` calls (a figure per call), or None: it does not count."""
        figure = self._ask({"op": "run", "case": case, "number": number})
        return None if figure is None else float(figure)  # type: ignore[arg-type]

    def close(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        self._proc.wait(timeout=120)


def serve_cases(cases: Mapping[str, Callable[[int], float | None]]) -> None:
    """The worker side: answer ``scalekit``, ``names`` and ``run`` requests until stdin closes.

    Each case takes a call count and returns its figure per call (ns, usually),
    or None when the measurement must not count (the case saw an event: a
    timeout, a fallback). The worker's stdout is the channel: anything else it
    prints goes to stderr.
    """
    import scalekit

    channel = sys.stdout
    sys.stdout = sys.stderr
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "scalekit":
            answer: object = str(Path(scalekit.__file__).parent)
        elif request["op"] == "names":
            answer = list(cases)
        else:
            answer = cases[request["case"]](int(request["number"]))
        channel.write(json.dumps(answer) + "\n")
        channel.flush()


def interleaved_best(
    sides: Sequence[Side],
    rounds: int,
    number: int,
    cases: Sequence[str] | None = None,
    dropped: dict[str, int] | None = None,
) -> dict[str, dict[str, float]]:
    """Best figure per side (by label) and case, over ``rounds`` rounds of ``number`` calls.

    Within a round each case runs on every side in turn, the sides' order
    alternating every round, so that machine noise hits every side alike.
    ``cases`` defaults to the last side's; a side runs only the cases it
    names. A measurement that does not count (None) is left out and counted
    in ``dropped`` per side, if given; a case no round counted is left out.
    """
    best: dict[str, dict[str, float]] = {side.label: {} for side in sides}
    for index in range(rounds):
        order = list(sides) if index % 2 == 0 else list(reversed(sides))
        for case in cases if cases is not None else sides[-1].names:
            for side in order:
                if case not in side.names:
                    continue
                figure = side.measure(case, number)
                if figure is not None:
                    best[side.label][case] = min(best[side.label].get(case, float("inf")), figure)
                elif dropped is not None:
                    dropped[side.label] = dropped.get(side.label, 0) + 1
    return best


def compare_with_before(
    before: str, script: str, argv: Sequence[str], number: int, rounds: int
) -> dict[str, dict[str, float]]:
    """Run ``script``'s cases against ``before`` (a folder or git rev) and this
    checkout, interleaved; best ns/call per side ("before", "after") and case."""
    with tempfile.TemporaryDirectory(prefix="scalekit-before-") as scratch:
        sides = [
            Side.of_script("before", source_path(before, Path(scratch)), script, argv),
            Side.of_script("after", ROOT / "src", script, argv),
        ]
        try:
            return interleaved_best(sides, rounds, number)
        finally:
            for side in sides:
                side.close()


def before_after_table(
    title: str, best: dict[str, dict[str, float]], *, baseline: str | None = None
) -> None:
    """Print before and after ns/call per case, after/before, and ratios to ``baseline``."""
    before, after = best["before"], best["after"]
    print(f"\n{title}")
    header = f"{'case':<48} {'before ns':>10} {'after ns':>10} {'after/before':>13}"
    if baseline:
        header += f" {'before vs base':>15} {'after vs base':>14}"
    print(header)
    print("-" * len(header))
    for case, after_ns in after.items():
        before_ns = before.get(case, float("nan"))
        line = f"{case:<48} {before_ns:>10.1f} {after_ns:>10.1f} {after_ns / before_ns:>12.2f}x"
        if baseline:
            line += f" {before_ns / before[baseline]:>14.2f}x {after_ns / after[baseline]:>13.2f}x"
        print(line)


# --- callgrind: instruction counts of labelled stretches of a worker process ---------

CALLGRIND_HELPER = r"""
#include <valgrind/callgrind.h>
void sk_start(void) { CALLGRIND_START_INSTRUMENTATION; }
void sk_zero(void) { CALLGRIND_ZERO_STATS; }
void sk_dump(const char *label) { CALLGRIND_DUMP_STATS_AT(label); }
"""


def build_callgrind_helper(folder: Path) -> str:
    """Compile the tiny library a worker loads (ctypes) to start, zero and dump callgrind."""
    source = folder / "skcallgrind.c"
    source.write_text(CALLGRIND_HELPER)
    lib = folder / "skcallgrind.so"
    subprocess.run(["cc", "-O1", "-shared", "-fPIC", "-o", str(lib), str(source)], check=True)
    return str(lib)


def callgrind_command(worker: Sequence[str], out: Path) -> list[str]:
    """``worker`` under callgrind, counting from its ``sk_start()``; dumps go into ``out``."""
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}/cg.%p",
        *worker,
    ]


def callgrind_totals(out: Path) -> dict[str, int]:
    """The instructions of each dump in ``out``, by the label the worker gave ``sk_dump``."""
    totals: dict[str, int] = {}
    for path in out.iterdir():
        text = path.read_text(errors="replace")
        label = re.search(r"^desc: Trigger: Client Request: (.+)$", text, re.M)
        total = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
        if label and total:
            totals[label.group(1).strip()] = int(total.group(1))
    return totals


def run_under_callgrind(
    workers: Mapping[str, tuple[list[str], dict[str, str]]], folder: Path, done: str
) -> dict[str, tuple[str, dict[str, int]]]:
    """Run each side's worker ``(command, env)`` under callgrind, all at once.

    Returns each side's standard output and :func:`callgrind_totals`. A worker
    that fails, or whose output lacks ``done``, raises ``RuntimeError`` with it.
    """
    procs = {}
    for side, (worker, env) in workers.items():
        out = folder / f"callgrind-{side}"
        out.mkdir()
        procs[side] = (
            subprocess.Popen(
                callgrind_command(worker, out),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env=env,
            ),
            out,
        )
    results = {}
    for side, (proc, out) in procs.items():
        stdout, _ = proc.communicate(timeout=3600)
        if proc.returncode != 0 or done not in stdout:
            raise RuntimeError(f"the {side} worker under callgrind failed:\n{stdout}")
        results[side] = (stdout, callgrind_totals(out))
    return results
