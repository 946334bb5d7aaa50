"""Coverage-guided fuzzing of the trace readers (atheris / libFuzzer; ``pip install -e '.[fuzz]'``).

``python benchmarks/fuzz.py --reader text|tracedat|perfetto --minutes N`` seeds the fuzzer
with inputs made from ``sample_traces/`` (:mod:`fuzz_seeds`) and feeds every mutated input,
written to a scratch file, to the reader's public function (``read_ftrace_text``,
``read_tracedat``, ``read_perfetto``) with ``salvage=False`` and then ``salvage=True``, and
to :func:`parsers.detect.detect_format`. A trace that reads is checked further: its
``info()``, its metadata as JSON, and a full Arrow validation of every table.

A :class:`~parsers.errors.KvmMmuError` is the reader doing its job. Anything else raised is
a **finding**: de-duplicated by exception type and the innermost ``parsers/`` frame, its
first input kept in ``tests/fuzz_regressions/<reader>/`` (which
``tests/parsers/test_fuzz_regressions.py`` replays without atheris), and the campaign goes on.
An input that hangs past ``--timeout`` or exhausts ``--rss-limit-mb`` ends libFuzzer; it is
kept the same way and reported as a finding too.

The fuzzer runs in a child process (libFuzzer exits the process when its time is up); this
parent reads the child's log and prints, per run: executions, exec/s, coverage (libFuzzer's
``cov:`` edges and ``ft:`` features, Python code here), corpus size and the findings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
REGRESSIONS = ROOT / "tests" / "fuzz_regressions"
READERS = ("text", "tracedat", "perfetto")

# --- the child: one libFuzzer process --------------------------------------------------------


def _load_reader(reader: str) -> Any:
    """The reader's public function; imported under atheris' instrumentation by the child."""
    if reader == "text":
        from parsers.text.reader import read_ftrace_text

        return read_ftrace_text
    if reader == "tracedat":
        from parsers.tracedat.reader import read_tracedat

        return read_tracedat
    from parsers.perfetto.reader import read_perfetto

    return read_perfetto


def exercise(read: Any, path: Path) -> None:
    """Everything one input goes through; raises whatever the readers raise."""
    from parsers.detect import detect_format
    from parsers.errors import KvmMmuError

    try:
        detect_format(path)
    except KvmMmuError:
        pass
    for salvage in (False, True):
        try:
            trace = read(path, salvage=salvage)
        except KvmMmuError:
            continue
        trace.info()
        trace.metadata.to_json()
        for name in trace.names:
            trace.table(name).validate(full=True)


def signature(exc: BaseException) -> str:
    """``Type at parsers/x.py:line`` (the innermost frame in the project, else the innermost)."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if f"{os.sep}parsers{os.sep}" in f.filename]
    frame = (ours or frames or [None])[-1]
    where = "?" if frame is None else f"{_short(frame.filename)}:{frame.lineno} ({frame.name})"
    return f"{type(exc).__name__} at {where}"


def _short(filename: str) -> str:
    parts = Path(filename).parts
    return "/".join(parts[parts.index("parsers"):]) if "parsers" in parts else Path(filename).name


class _Findings:
    """Findings of one child: the first input of each signature, and how often each hit."""

    def __init__(self, reader: str, log: Path, keep: Path) -> None:
        self.reader, self.log, self.keep = reader, log, keep
        self.counts: dict[str, int] = {}

    def add(self, exc: BaseException, data: bytes) -> None:
        sig = signature(exc)
        n = self.counts.get(sig, 0) + 1
        self.counts[sig] = n
        if n == 1:
            saved = save_input(self.keep, data)
            line = {"signature": sig, "input": str(saved), "message": str(exc)[:300],
                    "traceback": traceback.format_exception(exc)[-6:]}
            with self.log.open("a") as f:
                f.write(json.dumps(line) + "\n")
        if n & (n - 1) == 0:  # powers of two: cheap enough, exact for rare findings
            self.log.with_suffix(".counts.json").write_text(json.dumps(self.counts))


def save_input(folder: Path, data: bytes) -> Path:
    """Keep ``data`` in ``folder`` under its hash (idempotent)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha1(data).hexdigest()[:16]}.bin"
    if not path.exists():
        path.write_bytes(data)
    return path


def child(reader: str, findings_log: Path, keep: Path, libfuzzer_args: list[str]) -> None:
    import atheris

    with atheris.instrument_imports(include=["parsers"]):
        import parsers.detect  # noqa: F401  (every reader, under instrumentation)

        read = _load_reader(reader)
    from parsers.errors import KvmMmuError

    scratch = Path(tempfile.mkdtemp(prefix=f"fuzz-{reader}-", dir=_scratch_root()))
    path = scratch / "input"
    found = _Findings(reader, findings_log, keep)

    def one_input(data: bytes) -> None:
        path.write_bytes(data)
        try:
            exercise(read, path)
        except KvmMmuError:  # raised by a check of ours outside the readers' own handling
            pass
        except Exception as exc:  # noqa: BLE001 - anything else is the finding we look for
            found.add(exc, data)

    sys.setrecursionlimit(3000)
    atheris.Setup([sys.argv[0], *libfuzzer_args], one_input)
    atheris.Fuzz()


def _scratch_root() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


# --- the parent: seeds, child, figures -------------------------------------------------------

_STAT = re.compile(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+) corp: (\d+)/(\S+)")
_FINAL = re.compile(r"^stat::(\w+):\s*(\d+)")
_ARTIFACT = re.compile(r"Test unit written to (\S+)")


def campaign(args: argparse.Namespace) -> dict[str, Any]:
    """Run one reader's campaign; return its figures."""
    import fuzz_seeds

    work = Path(tempfile.mkdtemp(prefix=f"fuzz-{args.reader}-"))
    seeds = work / "seeds"
    fuzz_seeds.write_seeds(args.reader, seeds)
    corpus = Path(args.corpus) if args.corpus else work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    keep = Path(args.regressions) / args.reader
    findings_log = work / "findings.jsonl"
    lf = [str(corpus), str(seeds), f"-max_total_time={int(args.minutes * 60)}",
          f"-timeout={args.timeout}", f"-rss_limit_mb={args.rss_limit_mb}",
          f"-artifact_prefix={work}/", "-print_final_stats=1", f"-seed={args.seed}",
          *args.libfuzzer]
    cmd = [sys.executable, __file__, "--child", "--reader", args.reader, "--findings",
           str(findings_log), "--regressions", str(args.regressions), "--", *lf]
    log_path = work / "libfuzzer.log"
    started = time.monotonic()
    last: dict[str, Any] = {}
    final: dict[str, int] = {}
    artifacts: list[str] = []
    with log_path.open("w") as log, subprocess.Popen(
            cmd, stderr=subprocess.PIPE, stdout=log, text=True, errors="replace") as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            log.write(line)
            _progress(line, last, final, artifacts, args.verbose)
    seconds = time.monotonic() - started
    result = _figures(args, last, final, seconds, proc.returncode)
    notes: list[str] = []
    result["findings"] = _collect(args, findings_log, artifacts, keep, notes)
    result["notes"] = notes
    result["log"] = str(log_path)
    if not args.keep_work:
        shutil.rmtree(seeds, ignore_errors=True)
    return result


def _progress(line: str, last: dict[str, Any], final: dict[str, int], artifacts: list[str],
              verbose: bool) -> None:
    m = _STAT.match(line)
    if m:
        last.update(execs=int(m[1]), cov=int(m[3]), ft=int(m[4]), corpus=int(m[5]),
                    corpus_size=m[6])
        if verbose or m[2] == "pulse":
            print(f"  {line.rstrip()}", flush=True)
    elif (f := _FINAL.match(line)) is not None:
        final[f[1]] = int(f[2])
    elif (a := _ARTIFACT.search(line)) is not None:
        artifacts.append(a[1])
    elif line.startswith(("==", "INFO: A corpus", "ERROR", "INFO: Seed", "Done")):
        print(f"  {line.rstrip()}", flush=True)


def _figures(args: argparse.Namespace, last: dict[str, Any], final: dict[str, int],
             seconds: float, rc: int | None) -> dict[str, Any]:
    execs = final.get("number_of_executed_units", last.get("execs", 0))
    return {"reader": args.reader, "minutes": args.minutes, "seconds": round(seconds, 1),
            "executions": execs,
            "exec_per_s": final.get("average_exec_per_sec", round(execs / max(seconds, 1e-9))),
            "cov": last.get("cov"), "ft": last.get("ft"), "corpus": last.get("corpus"),
            "corpus_size": last.get("corpus_size"), "peak_rss_mb": final.get("peak_rss_mb"),
            "new_units": final.get("new_units_added"), "exit_status": rc}


def _collect(args: argparse.Namespace, findings_log: Path, artifacts: list[str], keep: Path,
             notes: list[str]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if findings_log.exists():
        counts_path = findings_log.with_suffix(".counts.json")
        counts = json.loads(counts_path.read_text()) if counts_path.exists() else {}
        for line in findings_log.read_text().splitlines():
            item = json.loads(line)
            item["hits"] = counts.get(item["signature"], 1)
            found.append(item)
    for art in artifacts:  # a hang, an OOM or a crash libFuzzer caught itself
        path = Path(art)
        kind = path.name.split("-", 1)[0]
        if not path.exists():
            continue
        alone = replay_alone(args, path)
        if alone is not None:  # the input alone is fine: the fuzzing process's own growth
            notes.append(f"libFuzzer stopped on a {kind}, but its input alone {alone}: not "
                         f"a finding (kept out of the regressions: {path})")
            continue
        saved = save_input(keep, path.read_bytes())
        found.append({"signature": f"libFuzzer {kind}", "input": str(saved), "hits": 1,
                      "message": f"libFuzzer stopped on a {kind}", "traceback": []})
    return found


def replay_alone(args: argparse.Namespace, path: Path) -> str | None:
    """Run ``path`` alone in a fresh uninstrumented process: a description of how it went
    when it stays within ``--timeout`` and ``--rss-limit-mb``, else None (it reproduces)."""
    cmd = [sys.executable, __file__, "--reader", args.reader, "--replay", str(path)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return None
    m = re.search(r"peak RSS (\d+) MB", done.stdout)
    if done.returncode != 0 or m is None or int(m[1]) >= args.rss_limit_mb:
        return None
    return f"reads in a fresh process with a peak RSS of {m[1]} MB"


def _replay(reader: str, path: Path) -> int:
    import resource

    from parsers.errors import KvmMmuError

    try:
        exercise(_load_reader(reader), path)
    except KvmMmuError:
        pass
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10} MB")
    return 0


def _report(result: dict[str, Any]) -> None:
    print(f"\n== {result['reader']}: {result['executions']:,} executions in "
          f"{result['seconds']:.0f} s ({result['exec_per_s']:,} exec/s); coverage cov: "
          f"{result['cov']} ft: {result['ft']}; corpus {result['corpus']} inputs "
          f"({result['corpus_size']}); peak RSS {result['peak_rss_mb']} MB")
    if not result["findings"]:
        print("   findings: none")
    for item in result["findings"]:
        print(f"   finding: {item['signature']} x{item['hits']}: {item['message'][:160]}")
        print(f"            input kept as {item['input']}")
    for note in result["notes"]:
        print(f"   note: {note}")
    print(f"   libFuzzer log: {result['log']}")


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reader", choices=READERS, required=True)
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--timeout", type=int, default=20, help="seconds one input may take")
    p.add_argument("--rss-limit-mb", type=int, default=2048)
    p.add_argument("--seed", type=int, default=1, help="libFuzzer's random seed")
    p.add_argument("--corpus", help="keep the growing corpus here (default: a scratch folder)")
    p.add_argument("--regressions", default=str(REGRESSIONS),
                   help="where findings' inputs are kept, one folder per reader")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON line too")
    p.add_argument("--verbose", action="store_true", help="echo every libFuzzer status line")
    p.add_argument("--keep-work", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--findings", help=argparse.SUPPRESS)
    p.add_argument("--replay", help="run this one input alone (no atheris) and print its peak RSS")
    p.add_argument("libfuzzer", nargs="*", help="extra libFuzzer flags, after --")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = _args(argv)
    if args.replay:
        return _replay(args.reader, Path(args.replay))
    if args.child:
        child(args.reader, Path(args.findings), Path(args.regressions) / args.reader,
              args.libfuzzer)
        return 0
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("benchmarks/fuzz.py needs atheris: pip install -e '.[fuzz]'", file=sys.stderr)
        return 2
    print(f"fuzzing the {args.reader} reader for {args.minutes:g} min (one process)", flush=True)
    result = campaign(args)
    _report(result)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "findings"}
                         | {"findings": [f["signature"] for f in result["findings"]]}))
    return 1 if result["findings"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
