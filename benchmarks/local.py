"""Local benchmark: `ferry copy` against cp -a, rsync -a and rclone copy.

    .venv/bin/python -m benchmarks.local [--datasets mixed,small,huge] [--repeat N]
        [--cold] [--quick] [--scale/--no-scale] [--json out.json] [--self-check]

For each dataset every tool copies the same cached source tree into a fresh
destination on the same filesystem, round-robin over the tools, `--repeat`
times; the median time is reported with the peak RSS of the tool's process
(GNU time's %M, i.e. ru_maxrss from wait4: for multi-process tools such as
rsync that is the largest single process, not the sum).  Then each tool runs again onto its own
finished destination (the no-op re-run).  Every destination is checked against
the source (file count and bytes after every run; content windows and mtimes
of a sample once per tool) outside the timings, so a broken run cannot look
fast.

Filesystem hygiene (see ../shared/notes/test-servers.md): on ext4 without a
journal, creating files within 60 s of deleting many others (360 s while the
inode table is still dirty) is 10-100x slower.  So nothing is deleted during a
run: a finished destination is renamed into a trash directory and its big
files are truncated to give the blocks back; the trash is deleted once, after
the last timing, followed by `sync`; the time of that delete is recorded and a
later run waits until 65 s have passed since it before its first timing.
Every destination gets a fresh name, so no tool ever writes into a directory
that held deleted entries.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from benchmarks import compile_ferry, datasets
from benchmarks.datasets import DATA_DIR, MiB, Spec, human_bytes, tree_stats

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
FERRY = str(VENV_BIN / "ferry") if (VENV_BIN / "ferry").exists() else "ferry"
DELETE_STAMP = DATA_DIR / "last-delete"
PENDING = DATA_DIR / "deleting"  # trash handed to the background deleter
DELETER_PID = DATA_DIR / "deleter.pid"
INODE_RECENCY_S = 65.0  # ext4 no-journal: freed inodes are skipped for 60 s (after sync)


# --- tools -----------------------------------------------------------------


@dataclass(frozen=True)
class Tool:
    key: str
    label: str
    argv: Callable[[Path, Path], list[str]]
    binary: str
    env: dict[str, str] = field(default_factory=dict)
    ferry: bool = False
    note: str = ""
    # What the no-op re-run runs instead of `argv`, when the plain command has
    # no skip logic at all (cp).
    noop_argv: Callable[[Path, Path], list[str]] | None = None
    noop_label: str = ""

    def command(self, phase: str) -> Callable[[Path, Path], list[str]]:
        return self.noop_argv if phase == "noop" and self.noop_argv else self.argv

    def title(self, phase: str) -> str:
        return self.noop_label if phase == "noop" and self.noop_label else self.label


TOOLS: dict[str, Tool] = {
    t.key: t
    for t in (
        Tool(
            "ferry",
            "ferry copy",
            lambda s, d: [FERRY, "copy", str(s), str(d), "--json", "--progress", "none"],
            FERRY,
            ferry=True,
        ),
        Tool(
            "ferry-nv",
            "ferry --no-verify",
            lambda s, d: [
                FERRY,
                "copy",
                str(s),
                str(d),
                "--no-verify",
                "--json",
                "--progress",
                "none",
            ],
            FERRY,
            ferry=True,
        ),
        Tool(
            "cp",
            "cp -a",
            lambda s, d: ["cp", "-a", f"{s}/.", str(d)],
            "cp",
            noop_argv=lambda s, d: ["cp", "-a", "-u", f"{s}/.", str(d)],
            noop_label="cp -a -u",
            note="plain cp -a has no skip and would rewrite every file",
        ),
        Tool("rsync", "rsync -a", lambda s, d: ["rsync", "-a", f"{s}/", f"{d}/"], "rsync"),
        Tool(
            "rclone",
            "rclone copy",
            lambda s, d: ["rclone", "copy", str(s), str(d)],
            "rclone",
            env={"RCLONE_CONFIG": "/dev/null"},
        ),
    )
}


TOOLS_DEFAULT = tuple(TOOLS)


def baseline_tools(tree: Path) -> list[Tool]:
    """`ferry` and `ferry --no-verify` run from another checkout (`--baseline DIR`): the same
    console script with that tree first on the path, so a refactor is timed against the code
    it replaced in the same run, on the same data."""
    env = {"PYTHONPATH": str(tree)}
    return [
        Tool(f"{t.key}@base", f"{t.label} @base", t.argv, t.binary, env=env, ferry=True)
        for t in (TOOLS["ferry"], TOOLS["ferry-nv"])
    ]


def tool_version(t: Tool) -> str:
    argv = [t.binary, "--version"]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out.strip().splitlines()[0] if out.strip() else "?"


# --- measuring -------------------------------------------------------------


@dataclass
class Sample:
    seconds: float
    maxrss_kib: int
    rc: int
    sync_seconds: float = 0.0
    summary: dict[str, Any] | None = None  # ferry --json
    error: str = ""


GNU_TIME = "/usr/bin/time"


def measure(
    argv: Sequence[str], env: dict[str, str] | None = None, json_out: bool = False
) -> Sample:
    """Run argv; wall time from fork to reap, and the peak RSS of the tool.

    The peak RSS comes from GNU time's `%M` (its wait4 ru_maxrss of the tool),
    because the ru_maxrss that *this* process's wait4 reports for a child is
    floored at this Python process's own RSS: the child's high-water mark
    starts from the (v)forked image of the parent before exec.  GNU time is a
    small C program, so its floor is ~2 MiB.  Without /usr/bin/time we fall
    back to wait4 here and the numbers are floors, not measurements.
    """
    full_env = dict(os.environ, **(env or {}))
    use_time = os.access(GNU_TIME, os.X_OK)
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile(prefix="ferry-bench-rss") as rss,
    ):
        cmd = [GNU_TIME, "-f", "%M", "-o", rss.name, *argv] if use_time else list(argv)
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=full_env)
        _pid, status, ru = os.wait4(p.pid, 0)
        seconds = time.perf_counter() - t0
        rc = os.waitstatus_to_exitcode(status)
        p.returncode = rc
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
        maxrss = int(ru.ru_maxrss)
        if use_time:
            # "Command exited with non-zero status N" may precede the number.
            lines = Path(rss.name).read_text().split()
            maxrss = int(lines[-1]) if lines and lines[-1].isdigit() else -1
    s = Sample(seconds, maxrss, rc)
    if json_out:
        try:
            s.summary = json.loads(stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            s.error = f"no JSON summary on stdout: {stdout[-300:]!r}"
    if rc != 0:
        s.error = f"exit {rc}: {(stderr or stdout).strip()[-500:]}"
    return s


def drop_caches() -> bool:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


# --- destinations ----------------------------------------------------------


class Workspace:
    """Fresh destination names; trash instead of delete until the very end."""

    def __init__(self, data_dir: Path, run_id: str) -> None:
        self.work = data_dir / "work"
        self.trash = data_dir / "trash"
        self.run_id = run_id
        self.work.mkdir(parents=True, exist_ok=True)
        self.trash.mkdir(parents=True, exist_ok=True)
        self._n = 0
        # Leftovers of an interrupted run: rename them into the trash too.
        for e in list(self.work.iterdir()):
            e.rename(self.trash / f"{e.name}.left.{run_id}")

    def fresh(self, label: str) -> Path:
        self._n += 1
        return self.work / f"{label}.{self.run_id}.{self._n:03d}"

    def discard(self, path: Path) -> None:
        datasets.discard(path, self.trash)

    def finish(self, background: bool, log: Callable[[str], None]) -> None:
        """Delete the trash (this run's and any leftovers), after all timings.

        On the dev VMs' filesystem (mounted with online `discard`) every freed
        extent is discarded synchronously on unlink: deleting a 20,000-file
        tree takes minutes, a full run's trash (~300,000 files) far longer.
        So by default a detached, niced `rm -rf` does it and records when it
        finished; the next run waits for it (see `wait_for_cleanup`).
        """
        entries = list(self.trash.iterdir()) if self.trash.is_dir() else []
        if not entries:
            if self.trash.is_dir():
                self.trash.rmdir()
            return
        PENDING.mkdir(parents=True, exist_ok=True)
        self.trash.rename(PENDING / self.run_id)
        script = 'rm -rf --one-file-system "$1"; sync; date +%s > "$2"; rm -f "$3"'
        argv = ["sh", "-c", script, "ferry-bench-deleter", str(PENDING), str(DELETE_STAMP)]
        if background:
            p = subprocess.Popen(
                ["nice", "-n", "19", "ionice", "-c", "3", *argv, str(DELETER_PID)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            DELETER_PID.write_text(f"{p.pid}\n")
            log(
                f"deleting the used destinations in the background (pid {p.pid}, {PENDING}); "
                "with online discard every unlink discards its blocks; the next run waits for it"
            )
        else:
            log("deleting the used destinations (after all timings)")
            t0 = time.perf_counter()
            subprocess.run([*argv, "/dev/null"], check=False)
            log(f"deleted them in {time.perf_counter() - t0:.1f} s")


def _deleter_alive() -> int | None:
    try:
        pid = int(DELETER_PID.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"ferry-bench-deleter" in cmdline else None


def _newest_dir_mtime(root: Path, depth: int = 2) -> float:
    """Newest mtime of root and its directories down to `depth` (an
    interrupted delete leaves its traces there)."""
    newest = 0.0
    level = [root]
    for _ in range(depth + 1):
        nxt: list[Path] = []
        for d in level:
            try:
                newest = max(newest, d.stat().st_mtime)
                nxt.extend(e for e in d.iterdir() if e.is_dir() and not e.is_symlink())
            except OSError:
                pass
        level = nxt
    return newest


def wait_for_cleanup(log: Callable[[str], None], wait: bool) -> None:
    """Wait until a previous run's background delete has finished, and then
    until 65 s have passed since the last delete (ext4 without a journal skips
    inodes freed in the last 60 s on every create, after `sync`)."""
    pid = _deleter_alive()
    if pid is not None:
        if not wait:
            log(
                f"WARNING: a previous run's delete (pid {pid}) is still running; timings, "
                "especially of small files, will be distorted (--no-wait-cleanup)"
            )
            return
        log(f"waiting for a previous run's background delete (pid {pid}) to finish ...")
        t0 = time.time()
        while _deleter_alive() is not None:
            time.sleep(5)
            if int(time.time() - t0) % 60 < 5:
                log(f"  still deleting after {time.time() - t0:.0f} s")
    last = 0.0
    try:
        last = float(DELETE_STAMP.read_text())
    except (OSError, ValueError):
        pass
    for d in (PENDING, DATA_DIR / "trash"):
        if d.is_dir():  # an interrupted delete: its last unlink may be recent
            last = max(last, _newest_dir_mtime(d))
    wait_s = last + INODE_RECENCY_S - time.time()
    if wait_s > 0:
        log(
            f"waiting {wait_s:.0f} s: the last delete (or trash change) here was "
            f"{time.time() - last:.0f} s ago (ext4 no-journal skips recently freed inodes "
            "on every create)"
        )
        time.sleep(wait_s)


# --- verification ----------------------------------------------------------


def check_counts(spec: Spec, dst: Path) -> str:
    if not dst.is_dir():
        return f"destination {dst} missing"
    st = tree_stats(dst)
    problems = []
    if st.files != spec.files:
        problems.append(f"{st.files} files, expected {spec.files}")
    if st.bytes != spec.total_bytes:
        problems.append(f"{st.bytes} bytes, expected {spec.total_bytes}")
    if st.other:
        problems.append(f"{st.other} non-regular entries")
    return "; ".join(problems)


def check_sample(spec: Spec, src: Path, dst: Path, n: int = 24) -> str:
    """Compare size, mtime (to the microsecond) and three 1 MiB windows of a
    spread sample of files, always including the largest."""
    entries = list(spec.entries())
    if not entries:
        return ""
    step = max(len(entries) // n, 1)
    picks = {rel for rel, _ in entries[::step]}
    picks.add(max(entries, key=lambda e: e[1])[0])
    for rel in sorted(picks):
        a, b = src / rel, dst / rel
        try:
            sa, sb = a.stat(), b.stat()
        except OSError as e:
            return f"{rel}: {e}"
        if sa.st_size != sb.st_size:
            return f"{rel}: size {sb.st_size} != {sa.st_size}"
        if abs(sa.st_mtime_ns - sb.st_mtime_ns) >= 1_000:
            return f"{rel}: mtime {sb.st_mtime_ns} != {sa.st_mtime_ns}"
        size = sa.st_size
        with open(a, "rb") as fa, open(b, "rb") as fb:
            for off in sorted({0, max(size // 2 - MiB // 2, 0), max(size - MiB, 0)}):
                fa.seek(off)
                fb.seek(off)
                if fa.read(MiB) != fb.read(MiB):
                    return f"{rel}: content differs near offset {off}"
    return ""


# --- results ---------------------------------------------------------------


@dataclass
class Row:
    dataset: str
    phase: str  # "copy" | "noop"
    cache: str  # "warm" | "cold"
    tool: str
    samples: list[Sample] = field(default_factory=list)
    verify: str = "ok"
    note: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.samples) and all(not s.error for s in self.samples) and self.verify == "ok"

    def times(self) -> list[float]:
        return [s.seconds for s in self.samples if not s.error]

    @property
    def median(self) -> float | None:
        t = self.times()
        return statistics.median(t) if t else None

    @property
    def spread(self) -> float | None:
        t = self.times()
        m = self.median
        return (max(t) - min(t)) / m if t and m else None

    @property
    def peak_rss_mib(self) -> float | None:
        return max(s.maxrss_kib for s in self.samples) / 1024 if self.samples else None

    @property
    def median_sync(self) -> float | None:
        t = [s.sync_seconds for s in self.samples if not s.error]
        return statistics.median(t) if t else None

    def to_json(self, spec: Spec) -> dict[str, Any]:
        med = self.median
        return {
            "dataset": self.dataset,
            "phase": self.phase,
            "cache": self.cache,
            "tool": self.tool,
            "label": TOOLS[self.tool].title(self.phase),
            "ok": self.ok,
            "verify": self.verify,
            "note": self.note,
            "medianSeconds": med,
            "spread": self.spread,
            "mbPerSecond": spec.total_bytes / med / 1e6 if med and self.phase == "copy" else None,
            "filesPerSecond": spec.files / med if med else None,
            "peakRssMiB": self.peak_rss_mib,
            "medianSyncSeconds": self.median_sync,
            "samples": [
                {
                    "seconds": s.seconds,
                    "maxRssKiB": s.maxrss_kib,
                    "rc": s.rc,
                    "syncSeconds": s.sync_seconds,
                    "error": s.error,
                    "bytesTransferred": (s.summary or {}).get("bytesTransferred"),
                }
                for s in self.samples
            ],
        }


@dataclass(frozen=True)
class Target:
    dataset: str
    phase: str
    tool: str
    other: str
    kind: str  # "time": tool/other time <= limit; "throughput": tool/other MB/s >= limit
    limit: float
    stretch: bool = False

    def describe(self) -> str:
        what = "time" if self.kind == "time" else "throughput"
        op = "<=" if self.kind == "time" else ">="
        phase = " no-op" if self.phase == "noop" else ""
        s = f"{self.dataset}{phase}: {TOOLS[self.tool].label} / {TOOLS[self.other].label} {what} {op} {self.limit:g}"
        return s + (" (stretch)" if self.stretch else "")


TARGETS = (
    Target("mixed", "copy", "ferry", "rsync", "time", 0.75),
    Target("mixed", "copy", "ferry-nv", "cp", "time", 1.1),
    Target("huge", "copy", "ferry-nv", "cp", "throughput", 0.9),
    Target("huge", "copy", "ferry", "cp", "throughput", 0.7),
    Target("small", "copy", "ferry", "rsync", "time", 1.0),
    Target("small", "copy", "ferry", "cp", "time", 1.0, stretch=True),
    Target("small", "noop", "ferry", "rsync", "time", 1.0),
    Target("mixed", "noop", "ferry", "rsync", "time", 2.0),
)
RSS_LIMIT_MIB = 150.0


def ratio(
    rows: dict[tuple[str, str, str, str], Row], ds: str, phase: str, cache: str, a: str, b: str
) -> float | None:
    ra, rb = rows.get((ds, phase, cache, a)), rows.get((ds, phase, cache, b))
    if not ra or not rb or not ra.ok or not rb.ok:
        return None
    ma, mb = ra.median, rb.median
    return ma / mb if ma and mb else None


# --- printing --------------------------------------------------------------


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(spec: Spec, rows: list[Row], out: Callable[[str], None]) -> None:
    if not rows:
        return
    r0 = rows[0]
    phase = "no-op re-run" if r0.phase == "noop" else "copy"
    n = max(len(r.samples) for r in rows)
    out(f"\n== {spec.dir_name} {phase} ({r0.cache}, median of {n}) — {spec.describe()}")
    out(
        f"{'tool':<19} {'time(s)':>8} {'spread':>7} {'MB/s':>8} {'files/s':>9} "
        f"{'RSS(MiB)':>9} {'+sync(s)':>9}  check"
    )
    for r in rows:
        med = r.median
        mbs = spec.total_bytes / med / 1e6 if med and r.phase == "copy" else None
        fps = spec.files / med if med else None
        spread = f"{r.spread * 100:.0f}%" if r.spread is not None else "-"
        check = (
            "ok"
            if r.ok
            else "FAILED: " + (next((s.error for s in r.samples if s.error), "") or r.verify)
        )
        if r.note:
            check += f" ({r.note})"
        out(
            f"{TOOLS[r.tool].title(r.phase):<19} {fmt(med, '8.3f')} {spread:>7} {fmt(mbs, '8.0f')} "
            f"{fmt(fps, '9.0f')} {fmt(r.peak_rss_mib, '9.1f')} {fmt(r.median_sync, '9.2f')}  {check}"
        )


def ratio_lines(
    dsname: str, cache: str, rows: dict[tuple[str, str, str, str], Row], quick: bool
) -> tuple[list[str], list[dict[str, Any]]]:
    lines: list[str] = []
    records: list[dict[str, Any]] = []

    def add(desc: str, value: float | None, target: Target | None, kind: str = "time") -> None:
        verdict = ""
        if target is not None and value is not None:
            passed = value <= target.limit if target.kind == "time" else value >= target.limit
            verdict = "PASS" if passed else "MISS"
            if quick or cache != "warm":
                verdict += " (indicative: targets are for full-size warm runs)"
        elif target is not None:
            verdict = "n/a"
        tgt = ""
        if target is not None:
            tgt = f"target {'<=' if target.kind == 'time' else '>='} {target.limit:g}"
            tgt += " (stretch)" if target.stretch else ""
        lines.append(f"  {desc:<48} {fmt(value, '6.2f')}  {tgt:<26} {verdict}")
        records.append(
            {
                "dataset": dsname,
                "cache": cache,
                "ratio": desc,
                "kind": kind,
                "value": value,
                "target": None if target is None else target.limit,
                "targetKind": None if target is None else target.kind,
                "verdict": verdict or None,
            }
        )

    for phase in ("copy", "noop"):
        pname = "no-op " if phase == "noop" else ""
        targeted: set[tuple[str, str]] = set()
        for t in TARGETS:
            if t.dataset != dsname or t.phase != phase:
                continue
            targeted.add((t.tool, t.other))
            v = ratio(rows, dsname, phase, cache, t.tool, t.other)
            if t.kind == "throughput" and v:
                v = 1 / v
            add(
                f"{pname}{TOOLS[t.tool].label} / {TOOLS[t.other].label} "
                f"{'throughput' if t.kind == 'throughput' else 'time'}",
                v,
                t,
                t.kind,
            )
        # The brief's standing ratios, where no target names them (and, with --baseline,
        # this tree against the other one).
        for a, b in (
            ("ferry", "rsync"),
            ("ferry-nv", "cp"),
            ("ferry", "rclone"),
            ("ferry-nv", "rclone"),
            ("ferry", "ferry@base"),
            ("ferry-nv", "ferry-nv@base"),
        ):
            if b not in TOOLS:
                continue
            if (a, b) in targeted:
                continue
            if phase == "noop" and "cp" in (a, b):
                continue  # cp's "no-op" rewrites everything: no meaningful ratio
            v = ratio(rows, dsname, phase, cache, a, b)
            add(f"{pname}{TOOLS[a].label} / {TOOLS[b].label} time", v, None)
        if dsname == "huge" and phase == "copy":
            for a in ("ferry", "ferry-nv", "rsync", "rclone"):
                if (a, "cp") in targeted:
                    continue
                v = ratio(rows, dsname, phase, cache, a, "cp")
                add(
                    f"{TOOLS[a].label} / cp -a throughput", 1 / v if v else None, None, "throughput"
                )
    # Peak RSS target, every dataset, both ferry modes, copy and no-op.
    peaks = [
        r.peak_rss_mib
        for (d, _p, c, t), r in rows.items()
        if d == dsname and c == cache and TOOLS[t].ferry and r.peak_rss_mib is not None
    ]
    if peaks:
        peak = max(peaks)
        verdict = "PASS" if peak <= RSS_LIMIT_MIB else "MISS"
        lines.append(
            f"  {'ferry peak RSS (MiB, any mode)':<48} {peak:6.1f}  "
            f"{'target <= 150 MiB':<26} {verdict}"
        )
        records.append(
            {
                "dataset": dsname,
                "cache": cache,
                "ratio": "ferry peak RSS MiB",
                "kind": "rss",
                "value": peak,
                "target": RSS_LIMIT_MIB,
                "targetKind": "rss",
                "verdict": verdict,
            }
        )
    return lines, records


# --- the run ---------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_one(tool: Tool, src: Path, dst: Path, cache: str, phase: str = "copy") -> Sample:
    os.sync()  # start from a clean page cache state: no writeback of the last run
    if cache == "cold":
        drop_caches()
    s = measure(tool.command(phase)(src, dst), tool.env, json_out=tool.ferry)
    t0 = time.perf_counter()
    os.sync()
    s.sync_seconds = time.perf_counter() - t0
    return s


def bench_dataset(
    spec: Spec, tools: list[Tool], repeat: int, caches: list[str], ws: Workspace
) -> list[Row]:
    src = datasets.ensure(spec, trash=ws.trash)
    rows: list[Row] = []
    for cache in caches:
        if cache == "warm":
            t0 = time.perf_counter()
            n = datasets.read_tree(src)
            log(
                f"{spec.dir_name}: warmed source ({human_bytes(n)} read in {time.perf_counter() - t0:.1f} s)"
            )
        copy_rows = {t.key: Row(spec.name, "copy", cache, t.key) for t in tools}
        noop_rows = {t.key: Row(spec.name, "noop", cache, t.key, note=t.note) for t in tools}
        finals: dict[str, Path] = {}
        for rep in range(repeat):
            # Round-robin, rotated each repeat: background noise, and whatever the previous
            # run left the filesystem doing (freeing blocks), spread over all tools.
            for t in rotated(tools, rep):
                dst = ws.fresh(f"{spec.dir_name}.{t.key}")
                s = run_one(t, src, dst, cache)
                row = copy_rows[t.key]
                row.samples.append(s)
                problem = s.error or check_counts(spec, dst)
                if not problem and rep == 0:
                    problem = check_sample(spec, src, dst)
                if (
                    not problem
                    and s.summary is not None
                    and s.summary.get("bytesTransferred") != spec.total_bytes
                ):
                    problem = f"bytesTransferred {s.summary.get('bytesTransferred')} != {spec.total_bytes}"
                if problem and row.verify == "ok":
                    row.verify = problem
                log(
                    f"{spec.dir_name} {cache} copy {rep + 1}/{repeat} {t.label:<18} {s.seconds:8.3f} s "
                    f"rss {s.maxrss_kib / 1024:6.1f} MiB sync {s.sync_seconds:5.2f} s"
                    + (f"  PROBLEM: {problem}" if problem else "")
                )
                if rep == repeat - 1:
                    finals[t.key] = dst
                else:
                    ws.discard(dst)
        for rep in range(repeat):
            for t in rotated(tools, rep):
                dst = finals[t.key]
                s = run_one(t, src, dst, cache, "noop")
                row = noop_rows[t.key]
                row.samples.append(s)
                problem = s.error or check_counts(spec, dst)
                if not problem and s.summary is not None and s.summary.get("bytesTransferred") != 0:
                    problem = f"not a no-op: bytesTransferred {s.summary.get('bytesTransferred')}"
                if problem and row.verify == "ok":
                    row.verify = problem
                log(
                    f"{spec.dir_name} {cache} no-op {rep + 1}/{repeat} {t.title('noop'):<18} {s.seconds:8.3f} s "
                    f"rss {s.maxrss_kib / 1024:6.1f} MiB"
                    + (f"  PROBLEM: {problem}" if problem else "")
                )
        for t in tools:
            ws.discard(finals[t.key])
        rows.extend(copy_rows.values())
        rows.extend(noop_rows.values())
    return rows


T = TypeVar("T")


def rotated(items: list[T], shift: int) -> list[T]:
    k = shift % len(items) if items else 0
    return items[k:] + items[:k]


def bench_scale(quick: bool, repeat: int, ws: Workspace) -> dict[str, Any]:
    spec = datasets.spec_for("scale", quick)
    src = datasets.ensure(spec, trash=ws.trash)
    st = tree_stats(src)  # also warms the dentry/inode caches
    entries = st.files + st.dirs
    base = [measure([FERRY, "--version"]) for _ in range(3)]
    baseline_kib = statistics.median(s.maxrss_kib for s in base)
    samples = []
    for _ in range(repeat):
        empty = ws.fresh("scale-empty")
        empty.mkdir()
        s = measure([FERRY, "plan", str(src), str(empty), "--quiet", "--progress", "none"])
        samples.append(s)
        log(
            f"scale: ferry plan over {entries:,} entries {s.seconds:.2f} s rss {s.maxrss_kib / 1024:.1f} MiB"
            + (f"  PROBLEM: {s.error}" if s.error else "")
        )
        ws.discard(empty)
    peak = max(s.maxrss_kib for s in samples)
    return {
        "dataset": spec.dir_name,
        "files": st.files,
        "dirs": st.dirs,
        "entries": entries,
        "baselineRssMiB": baseline_kib / 1024,
        "peakRssMiB": peak / 1024,
        "bytesPerEntry": (peak - baseline_kib) * 1024 / entries if entries else None,
        "medianSeconds": statistics.median(s.seconds for s in samples),
        "entriesPerSecond": entries / statistics.median(s.seconds for s in samples),
        "errors": [s.error for s in samples if s.error],
        "ok": not any(s.error for s in samples),
    }


def print_scale(r: dict[str, Any], out: Callable[[str], None]) -> None:
    out(
        f"\n== memory scale: `ferry plan --quiet` over {r['entries']:,} entries "
        f"({r['files']:,} empty files in {r['dirs']:,} dirs) onto an empty destination"
    )
    out(
        f"  time {r['medianSeconds']:.2f} s ({r['entriesPerSecond']:,.0f} entries/s), "
        f"peak RSS {r['peakRssMiB']:.1f} MiB, baseline (`ferry --version`) {r['baselineRssMiB']:.1f} MiB"
    )
    verdict = "PASS" if r["peakRssMiB"] <= RSS_LIMIT_MIB else "MISS"
    out(
        f"  bytes per entry (peak - baseline) / entries: {r['bytesPerEntry']:.0f}   "
        f"peak RSS target <= 150 MiB: {verdict}"
        + ("" if r["ok"] else f"  ERRORS: {r['errors'][:1]}")
    )


# --- self-check --------------------------------------------------------------


def self_check() -> int:
    """Cheap checks of the generator and the destination checks (no pytest)."""
    from benchmarks.datasets import Group, generate

    spec = Spec("selfcheck", (Group("a", 7, 3000, dirs=2), Group("", 1, 9 * MiB + 5)), seed=3)
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=DATA_DIR) as tmp:
        t = Path(tmp)
        generate(spec, t / "one")
        generate(spec, t / "two")
        generate(Spec("selfcheck", spec.groups, seed=4), t / "other")

        def content(root: Path) -> dict[str, tuple[bytes, int]]:
            return {
                rel: ((root / rel).read_bytes(), (root / rel).stat().st_mtime_ns)
                for rel, _ in spec.entries()
            }

        one, two, other = content(t / "one"), content(t / "two"), content(t / "other")
        assert one == two, "same seed must give identical trees"
        assert all(one[k][0] != other[k][0] for k in one if one[k][0]), "seed must change content"
        blobs = [v[0] for v in one.values()]
        assert len(set(blobs)) == len(blobs), "files must differ"
        import zlib

        big = max(blobs, key=len)
        assert len(zlib.compress(big, 1)) > 0.99 * len(big), "content must be incompressible"
        assert (
            check_counts(spec, t / "one") == "" and check_sample(spec, t / "one", t / "two") == ""
        )
        rel = next(iter(one))
        (t / "two" / rel).write_bytes(b"x" * len(one[rel][0]))
        assert check_sample(spec, t / "one", t / "two", n=100) != "", (
            "content change must be caught"
        )
        (t / "two" / rel).unlink()
        assert check_counts(spec, t / "two") != "", "a missing file must be caught"
        q = datasets.spec_for("mixed", quick=True)
        assert q.files == 112 and q.dir_name == "mixed-quick", q
        assert datasets.spec_for("small").files == 20_000
        assert [p for p, _ in datasets.spec_for("small").entries()][-1] == "d0199/f19999.bin"
    # Printing code on fake rows.
    rows = {}
    for tk, sec in (
        ("ferry", 0.7),
        ("ferry-nv", 0.5),
        ("cp", 0.5),
        ("rsync", 1.0),
        ("rclone", 2.0),
    ):
        rows[("mixed", "copy", "warm", tk)] = Row(
            "mixed", "copy", "warm", tk, [Sample(sec, 1000, 0)]
        )
    lines, recs = ratio_lines("mixed", "warm", rows, quick=False)
    assert any("PASS" in ln for ln in lines) and recs[0]["value"] == 0.7, lines
    print_table(datasets.spec_for("mixed"), list(rows.values()), lambda s: None)
    print("self-check ok")
    return 0


# --- main --------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.local",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--datasets",
        default="mixed,small,huge",
        help="comma list of mixed, small, huge (default: all three)",
    )
    ap.add_argument(
        "--tools", default=",".join(TOOLS_DEFAULT), help=f"comma list of {', '.join(TOOLS)}"
    )
    ap.add_argument(
        "--repeat", type=int, default=None, help="runs per tool (default 3; 1 with --quick)"
    )
    ap.add_argument(
        "--cold",
        action="store_true",
        help="also run everything with caches dropped before each run (needs root)",
    )
    ap.add_argument("--quick", action="store_true", help="1/10-scale datasets: a smoke run")
    ap.add_argument(
        "--scale",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the 200,000-entry memory-scale check (default: on unless --quick)",
    )
    ap.add_argument("--json", type=Path, metavar="OUT", help="write every number to this JSON file")
    ap.add_argument(
        "--keep-trash", action="store_true", help="do not delete the used destinations at the end"
    )
    ap.add_argument(
        "--delete",
        choices=("background", "foreground"),
        default="background",
        help="how the used destinations are deleted after the last timing (default: a detached, "
        "niced rm that the next run waits for)",
    )
    ap.add_argument(
        "--wait-cleanup",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wait for a previous run's background delete before timing (default: wait)",
    )
    ap.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also run ferry from the checkout at DIR (tools ferry@base, ferry-nv@base) and "
        "print this tree's times over that one's",
    )
    ap.add_argument("--self-check", action="store_true", help="check the harness itself and exit")
    args = ap.parse_args(argv)
    if args.self_check:
        return self_check()

    compile_ferry()
    if args.baseline is not None:
        if not (args.baseline / "ferry" / "cli.py").is_file():
            ap.error(f"--baseline {args.baseline}: not a Ferry checkout (no ferry/cli.py)")
        compile_ferry(args.baseline.resolve())
        for t in baseline_tools(args.baseline.resolve()):
            TOOLS[t.key] = t
        wanted = args.tools.split(",")
        args.tools = ",".join(wanted + [f"{k}@base" for k in wanted if f"{k}@base" in TOOLS])
    quick: bool = args.quick
    repeat: int = args.repeat or (1 if quick else 3)
    scale: bool = (not quick) if args.scale is None else args.scale
    names = [n for n in args.datasets.split(",") if n]
    for n in names:
        if n not in ("mixed", "small", "huge"):
            ap.error(f"unknown dataset {n!r}")
    tools = []
    for k in args.tools.split(","):
        if k not in TOOLS:
            ap.error(f"unknown tool {k!r}")
        if shutil.which(TOOLS[k].binary) is None:
            log(f"skipping {TOOLS[k].label}: {TOOLS[k].binary} not found")
            continue
        tools.append(TOOLS[k])
    caches = ["warm"]
    if args.cold:
        if drop_caches():
            caches.append("cold")
        else:
            log("--cold: cannot write /proc/sys/vm/drop_caches (not root?); cold runs skipped")

    lines: list[str] = []

    def out(s: str) -> None:
        lines.append(s)
        print(s, flush=True)

    run_id = time.strftime("%Y%m%dT%H%M%S")
    ws = Workspace(DATA_DIR, run_id)
    meta: dict[str, Any] = {
        "runId": run_id,
        "host": platform.node(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavgStart": os.getloadavg(),
        "quick": quick,
        "repeat": repeat,
        "caches": caches,
        "tools": {
            t.key: {
                "label": t.label,
                "argv": t.argv(Path("SRC"), Path("DST")),
                "noopArgv": t.command("noop")(Path("SRC"), Path("DST")),
                "env": t.env,
                "version": tool_version(t),
            }
            for t in tools
        },
    }
    all_rows: dict[tuple[str, str, str, str], Row] = {}
    results: dict[str, Any] = {"meta": meta, "datasets": {}, "ratios": [], "scale": None}
    t_start = time.perf_counter()
    failed = True
    try:
        # Generate first (generation is never timed), then respect the inode recency window.
        specs = [datasets.spec_for(n, quick) for n in names]
        for spec in specs:
            datasets.ensure(spec, trash=ws.trash)
        if scale:
            datasets.ensure(datasets.spec_for("scale", quick), trash=ws.trash)
        wait_for_cleanup(log, wait=args.wait_cleanup)
        for spec in specs:
            rows = bench_dataset(spec, tools, repeat, caches, ws)
            for r in rows:
                all_rows[(r.dataset, r.phase, r.cache, r.tool)] = r
            results["datasets"][spec.name] = {
                "spec": spec.as_dict(),
                "rows": [r.to_json(spec) for r in rows],
            }
        if scale:
            results["scale"] = bench_scale(quick, repeat, ws)
        out(
            f"\nferry benchmark {run_id} on {platform.node()} ({os.cpu_count()} cpus), "
            f"{'QUICK 1/10 datasets, ' if quick else ''}repeat {repeat}, load avg at start "
            f"{meta['loadavgStart'][0]:.2f}, end {os.getloadavg()[0]:.2f}"
        )
        for t in tools:
            env = "".join(f"{k}={v} " for k, v in t.env.items())
            cmd = " ".join(t.argv(Path("SRC"), Path("DST")))
            out(f"  {t.label:<18} {env}{cmd}   [{meta['tools'][t.key]['version']}]")
            if t.noop_argv:
                cmd = " ".join(t.command("noop")(Path("SRC"), Path("DST")))
                out(f"  {'  (no-op re-run)':<18} {env}{cmd}")
        for spec in specs:
            for cache in caches:
                for phase in ("copy", "noop"):
                    print_table(
                        spec, [all_rows[(spec.name, phase, cache, t.key)] for t in tools], out
                    )
                rl, recs = ratio_lines(spec.name, cache, all_rows, quick)
                out(
                    f"-- {spec.dir_name} ratios ({cache}; time ratios: lower is better, "
                    "throughput ratios: higher is better)"
                )
                for ln in rl:
                    out(ln)
                results["ratios"].extend(recs)
        if results["scale"]:
            print_scale(results["scale"], out)
        out(f"\ntotal benchmark time {time.perf_counter() - t_start:.0f} s")
        meta["loadavgEnd"] = os.getloadavg()
        results["report"] = lines
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2) + "\n")
            log(f"wrote {args.json}")
        failed = any(not r.ok for r in all_rows.values())
    finally:
        if not args.keep_trash:
            ws.finish(background=args.delete == "background", log=log)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
