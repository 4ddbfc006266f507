"""The `ferry` command: the composition root, and the one module that imports both halves.

Start-up is kept lean (no pydantic, rich or cloud SDK import unless the
command needs it) because a no-op sync is dominated by it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

from ferry.mover.errors import ErrorKind, FerryError

if TYPE_CHECKING:
    from enum import StrEnum

EXIT_CODES = "\n".join(
    ["exit codes:", "  0    success"]
    + [f"  {k.exit_code:<4} {k.reason}: {k.name.lower().replace('_', ' ')}" for k in ErrorKind]
)

log = logging.getLogger("ferry")
MOVER_COMMANDS = ("copy", "sync", "plan", "verify", "run")  # the ones that move or read data


def _version() -> str:
    from ferry import version

    return version()


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's own, given the width the way shutil.get_terminal_size finds it: argparse
    imports shutil for that (and shutil bz2 and lzma), ~3 ms of every run's start-up."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        if width is None:
            try:
                width = (
                    int(os.environ.get("COLUMNS", "0"))
                    or os.get_terminal_size(
                        sys.__stdout__.fileno()  # type: ignore[union-attr]
                    ).columns
                )
            except (AttributeError, ValueError, OSError):
                width = 80
            width -= 2
        super().__init__(prog, indent_increment, max_help_position, width)


class _VersionAction(argparse.Action):
    """Looks the version up only when asked: importlib.metadata costs ~20 ms of start-up."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(f"ferry {_version()}")
        parser.exit()


# Flags by the commands that use them: a flag a command would ignore is refused by argparse
# ("unrecognized arguments") instead of being accepted and ignored.
_TRANSFER = ("copy", "sync")  # commands that write
_COMPARE = ("copy", "sync", "plan")  # commands that decide what to copy


def _choices(values: type[StrEnum]) -> list[str]:
    """A flag's choices are its option enum's values: defined once, in `mover/options.py`."""
    return [v.value for v in values]


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _transfer_args(p: argparse.ArgumentParser, command: str) -> None:
    from ferry.mover.options import Compress, Delta, ErrorPolicy, Fsync, SymlinkPolicy, Verify

    p.add_argument("source", help="path, file://, s3://, sftp://, smb:// or ferry:// URI")
    p.add_argument("destination", help="path, file://, s3://, sftp://, smb:// or ferry:// URI")
    if command in _COMPARE:
        p.add_argument(
            "--checksum",
            "-c",
            action="store_true",
            help="compare by content (digest) instead of size and mtime",
        )
        p.add_argument(
            "--size-only",
            action="store_true",
            help="compare by size alone: a file of the same size is unchanged, whatever its "
            "mtime (rsync/rclone --size-only)",
        )
        p.add_argument(
            "--update",
            "-u",
            action="store_true",
            help="skip files whose destination copy is newer than the source's (rsync -u)",
        )
    p.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="GLOB",
        help="include matching paths (repeatable)",
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="exclude matching paths (repeatable)",
    )
    p.add_argument(
        "--filter-from", metavar="FILE", help="ordered '+ pattern' / '- pattern' rules, one a line"
    )
    p.add_argument(
        "--files-from",
        metavar="FILE",
        help="only these paths, one a line relative to SOURCE ('#' comments; a directory: "
        "all below it); what is not listed is neither copied nor deleted (rsync/rclone)",
    )
    for bound, text in (
        ("--min-size", "only files of at least SIZE (10K, 1M, 2G: binary units)"),
        ("--max-size", "only files of at most SIZE"),
    ):
        p.add_argument(bound, default=None, metavar="SIZE", help=text)
    for bound, text in (
        ("--min-age", "only files modified at least AGE ago (30s, 5m, 2h, 7d)"),
        (
            "--max-age",
            "only files modified at most AGE ago; files out of any size or age "
            "bound are left alone: not copied, not deleted by sync",
        ),
    ):
        p.add_argument(bound, default=None, metavar="AGE", help=text)
    if command in (*_COMPARE, "verify"):
        p.add_argument(
            "--rename",
            action="append",
            default=[],
            metavar="'s/REGEX/REPL/'",
            help="rename at the destination: Python re, sed's s syntax (flags g, i), applied in "
            "order to each name (file, directory or link), never across '/'; two names made "
            "one are refused before anything is written (repeatable)",
        )
    if command in (*_COMPARE, "verify"):  # metadata transforms (rsync's)
        p.add_argument(
            "--chmod",
            default=None,
            metavar="SPEC",
            help="set destination modes, rsync's syntax: comma list of chmod clauses, D/F "
            "prefix for directories/files only, e.g. D755,F644 or u+rwx,go-w (implies perms)",
        )
        p.add_argument(
            "--chown",
            default=None,
            metavar="USER:GROUP",
            help="set destination owners by name or id, rsync's --chown (needs root; implies "
            "owners)",
        )
    if command in _COMPARE:  # the audit log
        p.add_argument(
            "--audit-log",
            default=None,
            metavar="FILE|-",
            help="append one JSON line per decision and action (a plan's too) to FILE, or "
            "write them to stdout ('-': then --json is refused and a plan's listing goes to "
            "stderr)",
        )
    if command in (*_TRANSFER, "verify"):
        p.add_argument(
            "--transfers",
            type=int,
            default=None,
            metavar="N",
            help="parallel workers (default: "
            + ("the profile's, else " if command in _TRANSFER else "")
            + "from the usable cores and the destination's kind: 4 a core to a local disk, 8 "
            "to remote storage)",
        )
    if command in _TRANSFER:
        _profile_flags(p)
        p.add_argument(
            "--chunk-size",
            default=None,
            metavar="SIZE",
            help="chunk size for large files (default 16M; 8M to S3, whose uploads hold each "
            "chunk in memory)",
        )
        p.add_argument(
            "--bwlimit",
            default=None,
            metavar="RATE",
            help="bandwidth limit in bytes/s, e.g. 50M, or rclone's timetable "
            "'08:00,512K 12:00,10M 18:00,off' (or 'Mon-08:00,512K Sat-10:00,off')",
        )
        p.add_argument(
            "--bwlimit-tz",
            default=None,
            metavar="ZONE",
            help="IANA zone the --bwlimit timetable is read in (default: the local zone, TZ)",
        )
        p.add_argument(
            "--retries",
            type=int,
            default=3,
            metavar="N",
            help="retries for transient errors (default 3)",
        )
        p.add_argument(
            "--delta",
            choices=_choices(Delta),
            default=Delta.AUTO.value,
            help="send updated files of 64K or more as block deltas: auto where the destination "
            "says it pays (ferry://), on wherever it can rebuild files (local, ferry://), off "
            "never (default auto)",
        )
        p.add_argument(
            "--error-policy",
            choices=_choices(ErrorPolicy),
            default=ErrorPolicy.ABORT.value,
            help="stop at the first failed file, or skip it and go on",
        )
    p.add_argument(
        "--preserve",
        default=None,
        metavar="FLAGS",
        help="comma list of times,perms,owners,xattrs,links,hardlinks,sparse,acls; +flag/-flag "
        "adjust the default (times,perms,links,hardlinks,sparse); 'none', or 'all' (all but acls; "
        "'all,+acls' adds them)"
        + ("; verify compares what is preserved" if command == "verify" else ""),
    )
    if command in _COMPARE:
        p.add_argument(
            "--links",
            choices=_choices(SymlinkPolicy),
            default=SymlinkPolicy.PRESERVE.value,
            help="symlinks: copy as links (default), copy what they point at inside the tree, or skip",
        )
    if command in _TRANSFER:
        p.add_argument(
            "--no-verify",
            action="store_true",
            help="do not hash while copying (fastest; kernel copy when local)",
        )
        p.add_argument(
            "--verify",
            choices=_choices(Verify),
            default=None,
            help="inline (default): digest from the one source read; full: also read the destination back",
        )
        p.add_argument(
            "--fsync",
            choices=_choices(Fsync),
            default=Fsync.END.value,
            help="durability: end (default) flushes once before deletes and success; file also syncs "
            "each file before publishing it; none leaves write-back to the kernel, as cp and rsync do",
        )
        p.add_argument(
            "--manifest", metavar="PATH", help="write JSON lines of path, size, mtime, digest"
        )
    p.add_argument(
        "--accelerators",
        choices=["on", "off"],
        default="on",
        help="on (default): hand-written protocol paths where measured faster; off: each "
        "backend's library only (botocore, paramiko, smbprotocol). FERRY_ACCELERATORS=off also turns them off",
    )
    p.add_argument(
        "--compress",
        choices=_choices(Compress),
        default=Compress.AUTO.value,
        help="zstd per chunk on a ferry:// wire: auto (default) stops trying for a file whose "
        "first chunks do not shrink, on tries every chunk, off never; a chunk crosses "
        "compressed only when that makes it smaller. on needs a ferry:// endpoint",
    )
    p.add_argument("--json", action="store_true", help="print the final summary as JSON on stdout")
    p.add_argument(
        "--progress",
        choices=["auto", "bar", "json", "none"],
        default="auto",
        help="progress display (auto: a bar on a terminal)",
    )
    p.add_argument(
        "-P",
        dest="progress",
        action="store_const",
        const="bar",
        help="the progress bar, terminal or not (= --progress bar; rsync -P, rclone -P)",
    )
    p.add_argument(
        "--stats",
        default=None,
        metavar="INTERVAL",
        help="one summary line on stderr every INTERVAL (30s, 5m) while the run lasts",
    )
    if command != "plan":  # plan's own --quiet lists totals without the entries
        p.add_argument(
            "--quiet",
            "-q",
            action="store_true",
            help="no summary line; errors are still printed",
        )
    p.add_argument(
        "--log-file",
        default=None,
        metavar="FILE",
        help="also write the log (at --log-level or -v's level) to FILE, appended",
    )
    p.add_argument(
        "--log-level",
        choices=_LOG_LEVELS,
        default=None,
        type=str.upper,
        help="DEBUG, INFO, WARNING (default) or ERROR, instead of -v/-vv",
    )
    if command in ("sync", "plan"):
        p.add_argument(
            "--delete-excluded",
            action="store_true",
            help="sync: also delete at the destination what the filters leave out "
            "(rsync/rclone --delete-excluded)",
        )
        p.add_argument(
            "--allow-empty-source",
            action="store_true",
            help="let sync run from an empty source (deleting everything)",
        )
    p.add_argument("-v", "--verbose", action="count", default=0)
    _log_format_arg(p)
    if command in _TRANSFER:
        p.add_argument(
            "--dry-run",
            "-n",
            action="store_true",
            help="only show what would be done (same as `ferry plan`)",
        )


def _log_format_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=None,
        help="stderr as text, or one JSON object a line (default: $FERRY_LOG_FORMAT, else text)",
    )


def _safety_args(p: argparse.ArgumentParser, *, deletes: bool) -> None:
    p.add_argument(
        "--min-free",
        default=None,
        metavar="SIZE|PCT",
        help="free space to leave at the destination: a size (2G) or a percentage of its "
        "size (5%%); a plan that would leave less is refused before anything is written "
        "(default 1%%; 0 for none)",
    )
    p.add_argument(
        "--no-preflight",
        action="store_true",
        help="do not compare the plan with the destination's free space before writing",
    )
    if deletes:
        p.add_argument(
            "--max-delete",
            type=int,
            default=None,
            metavar="N",
            help="sync: if more than N entries (files, directories, links) would be deleted, "
            f"delete none and exit {ErrorKind.DELETE_LIMIT.exit_code}",
        )


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or with `command` only that command's options: adding the four
    transfer commands' ~100 arguments (each one a help formatter and gettext lookups) is
    ~5 ms of a run's start-up. `ferry --help` still lists every command."""
    parser = argparse.ArgumentParser(
        prog="ferry",
        description="Move bulk data between local paths, PVCs, S3, SFTP and SMB: fast, verified, resumable.",
        epilog=EXIT_CODES,
        formatter_class=_Formatter,
    )
    parser.add_argument(
        "--version", action=_VersionAction, nargs=0, help="show the version and exit"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (
        (
            "copy",
            "copy new and changed entries from SOURCE to DESTINATION. SOURCE may be one file: "
            "it goes into DESTINATION if that is a directory or ends with '/', else to that "
            "name",
        ),
        (
            "sync",
            "copy, then delete what DESTINATION has and SOURCE does not (deletes run last). "
            "A single file as SOURCE is copied, as by copy: nothing is deleted",
        ),
        ("plan", "dry run: what copy/sync would copy, update, skip and delete"),
        ("verify", "compare both trees by content and metadata; exit 1 on any difference"),
    ):
        p = sub.add_parser(
            name,
            help=text,
            description=text,
            epilog=EXIT_CODES,
            formatter_class=_Formatter,
        )
        if command not in (None, name):
            continue
        _transfer_args(p, name)
        if name != "verify":
            _safety_args(p, deletes=name in ("sync", "plan"))
        if name == "plan":
            p.add_argument(
                "--sync", action="store_true", help="plan a sync (with deletes) instead of a copy"
            )
            p.add_argument(
                "--quiet", "-q", action="store_true", help="only the totals, not every entry"
            )
    serve = sub.add_parser(
        "serve",
        help="serve ROOT to ferry:// clients over mutual TLS (receive and send)",
        description="Serve ROOT to ferry:// clients: copy, sync, plan and verify to and from "
        "it. Clients must present a certificate signed by --tls-ca; nothing outside ROOT is "
        "ever read or written.",
        formatter_class=_Formatter,
    )
    if command in (None, "serve"):
        serve.add_argument("root", metavar="ROOT", help="the directory served (created if missing)")
        serve.add_argument("--listen", required=True, metavar="HOST:PORT", help="where to listen")
        serve.add_argument(
            "--tls-cert", required=True, metavar="FILE", help="server certificate (PEM)"
        )
        serve.add_argument("--tls-key", required=True, metavar="FILE", help="its private key (PEM)")
        serve.add_argument(
            "--tls-ca", required=True, metavar="FILE", help="CA that signs client certificates"
        )
        serve.add_argument("-v", "--verbose", action="count", default=0)
        _log_format_arg(serve)
    run = sub.add_parser(
        "run",
        help="run one transfer from a TransferSpec file (what mover pods do)",
        formatter_class=_Formatter,
    )
    run.add_argument("--spec", required=True, metavar="FILE", help="TransferSpec as JSON or YAML")
    run.add_argument("-v", "--verbose", action="count", default=0)
    _log_format_arg(run)
    op = sub.add_parser(
        "operator", help="run the Kubernetes operator", add_help=False, formatter_class=_Formatter
    )
    op.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _profile_flags(p: argparse.ArgumentParser) -> None:
    """--profile (its help derived from the profile table) and --buffer-size."""
    from ferry.mover.profiles import help_text

    p.add_argument(
        "--profile",
        default=None,
        metavar="NAME",
        help=f"named tuning; flags given win over it. {help_text()}",
    )
    p.add_argument(
        "--buffer-size",
        default=None,
        metavar="SIZE",
        help="the piece each worker streams a file through, 64K to 16M (default 2M)",
    )


def _tuned(args: argparse.Namespace, options: Any, src: Any, dst: Any) -> tuple[Any, Any, Any]:
    """Options and endpoints with the run's tuning (flags, then --profile, then the
    host), ferry:// streams included where a URI did not set them itself."""
    from urllib.parse import parse_qs, urlsplit

    from ferry.mover.endpoints import FerryEndpoint
    from ferry.mover.options import parse_size
    from ferry.mover.tuning import apply, resolve

    given = vars(args)
    ends = tuple(
        (e, isinstance(e, FerryEndpoint) and "streams" in parse_qs(urlsplit(uri).query))
        for e, uri in ((src, args.source), (dst, args.destination))
    )
    buffer = given.get("buffer_size")
    t = resolve(
        dest_kind=dst.kind,
        profile=given.get("profile"),
        transfers=given.get("transfers"),
        streams=next((e.streams for e, set_ in ends if set_), None),
        chunk_size=options.chunk_size or None,
        buffer_size=parse_size(buffer, "--buffer-size") if buffer is not None else None,
    )
    src, dst, options = apply(t, options, (ends[0], ends[1]))
    return options, src, dst


def _options(args: argparse.Namespace, mode: str, dry_run: bool) -> Any:
    from ferry.mover import bwtable
    from ferry.mover.filters import rules_from_cli
    from ferry.mover.options import (
        Compare,
        Compress,
        Delta,
        ErrorPolicy,
        Fsync,
        MinFree,
        Mode,
        Options,
        Preserve,
        SymlinkPolicy,
        Verify,
        parse_duration,
        parse_size,
    )

    filter_lines: list[str] = []
    if args.filter_from:
        try:
            with open(args.filter_from, encoding="utf-8") as f:
                filter_lines = f.read().splitlines()
        except OSError as exc:
            raise FerryError(
                ErrorKind.USAGE, f"cannot read filter file: {exc.strerror}", args.filter_from
            ) from None
    if args.files_from is not None:
        from ferry.mover.filters import parse_files_from

        try:
            with open(args.files_from, encoding="utf-8") as f:
                kw_files = parse_files_from(f.read().splitlines())
        except OSError as exc:
            raise FerryError(
                ErrorKind.USAGE, f"--files-from: cannot read: {exc.strerror}", args.files_from
            ) from None
    else:
        kw_files = None
    # Only the running command's flags exist in `args`; the others keep Options' defaults.
    given = vars(args)
    kw: dict[str, Any] = {}
    if given.get("verify"):
        kw["verify"] = Verify(given["verify"])
    elif given.get("no_verify"):
        kw["verify"] = Verify.NONE
    if given.get("checksum") and given.get("size_only"):
        raise FerryError(ErrorKind.USAGE, "--size-only and --checksum: choose one comparison")
    if given.get("checksum"):
        kw["compare"] = Compare.CHECKSUM
    if given.get("size_only"):
        kw["compare"] = Compare.SIZE
    if given.get("update"):
        kw["update"] = True
    if "accelerators" in given:
        kw["accelerators"] = given["accelerators"] == "on"
    if "fsync" in given:
        kw["fsync"] = Fsync(given["fsync"])
    if "compress" in given:
        kw["compress"] = Compress(given["compress"])
    if "links" in given:
        kw["symlinks"] = SymlinkPolicy(given["links"])
    for name in ("transfers", "retries", "allow_empty_source", "manifest", "delete_excluded"):
        if given.get(name) is not None:
            kw[name] = given[name]
    if "error_policy" in given:
        kw["error_policy"] = ErrorPolicy(given["error_policy"])
    if "delta" in given:
        kw["delta"] = Delta(given["delta"])
    # An empty size is refused like any other bad one, never read as "unlimited" or "default".
    if given.get("chunk_size") is not None:
        kw["chunk_size"] = parse_size(given["chunk_size"], "--chunk-size")
    if given.get("bwlimit") is not None:
        tz = bwtable.zone(given.get("bwlimit_tz"), "--bwlimit-tz")
        kw["bwlimit"] = bwtable.BwTable.parse(given["bwlimit"], "--bwlimit", tz)
    elif given.get("bwlimit_tz") is not None:
        raise FerryError(ErrorKind.USAGE, "--bwlimit-tz needs --bwlimit")
    if given.get("no_preflight"):
        kw["preflight"] = False
    if given.get("min_free") is not None:
        kw["min_free"] = MinFree.parse(given["min_free"])
    if given.get("max_delete") is not None:
        kw["max_delete"] = given["max_delete"]
    if given.get("rename"):
        kw["rename"] = tuple(given["rename"])
    for name in ("min_size", "max_size"):
        if given.get(name) is not None:
            kw[name] = parse_size(given[name], "--" + name.replace("_", "-"))
    for name in ("min_age", "max_age"):
        if given.get(name) is not None:
            kw[name] = parse_duration(given[name], "--" + name.replace("_", "-"))
    for flag in ("chmod", "chown", "audit_log"):
        if given.get(flag) is not None:
            kw[flag] = given[flag]
    if given.get("audit_log") == "-" and given.get("json"):
        raise FerryError(
            ErrorKind.USAGE, "--audit-log - writes to stdout: it cannot share it with --json"
        )
    return Options(
        mode=Mode(mode),
        preserve=Preserve.parse(args.preserve) if args.preserve is not None else Preserve(),
        filters=rules_from_cli(args.include, args.exclude, filter_lines),
        files_from=kw_files,
        dry_run=dry_run,
        **kw,
    )


def _sinks(choice: str, stats: str | None = None) -> Any:
    from ferry.mover.progress import MultiSink, StatsSink

    sink = _display(choice)
    if stats is None:
        return sink
    from ferry.mover.options import parse_duration

    interval = parse_duration(stats, "--stats")
    if interval <= 0:
        raise FerryError(ErrorKind.USAGE, f"--stats {stats!r} must be a positive interval")
    return MultiSink([sink, StatsSink(interval)])


def _display(choice: str) -> Any:
    from ferry.mover.progress import BarSink, JsonLinesSink, Sink

    if choice == "auto":
        choice = "bar" if sys.stderr.isatty() else "none"
    if choice == "bar":
        return BarSink()
    if choice == "json":
        from ferry.mover.jsonlog import progress_fields

        return JsonLinesSink(sys.stderr, fields=progress_fields())
    return Sink()


def _setup_logging(
    verbose: int, fmt: str, log_level: str | None = None, log_file: str | None = None
) -> None:
    from ferry.mover import jsonlog
    from ferry.mover.redact import RedactingFormatter

    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    if log_level is not None:
        level = logging.getLevelNamesMapping()[log_level]
    obj = jsonlog.object_from_env()
    jsonlog.configure(fmt, obj)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        try:
            handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
        except OSError as exc:
            raise FerryError(
                ErrorKind.USAGE, f"--log-file: cannot open: {exc.strerror}", log_file
            ) from None
    for handler in handlers:
        handler.setFormatter(
            jsonlog.JsonFormatter(obj)
            if fmt == "json"
            else RedactingFormatter("ferry: %(levelname)s: %(message)s")
        )
    logging.basicConfig(level=level, handlers=handlers)


# Counters any started work moves: all zero means the run stopped before it began.
_WORK_DONE = (
    "filesCopied",
    "filesUpdated",
    "filesSkipped",
    "filesDeleted",
    "filesFailed",
    "bytesTransferred",
)


def _print_summary(summary: Any, as_json: bool, quiet: bool = False) -> None:
    from ferry.mover.jsonlog import say
    from ferry.mover.options import format_size as _human

    if as_json:
        print(summary.dumps())
        return
    d = summary.to_json()
    if summary.fatal and not any(d[k] for k in _WORK_DONE):
        # Refused before any work: the error alone, not a line of zeros above it.
        say(f"ferry: error: {summary.fatal} [{summary.fatal.kind.reason}]", "error")
        return
    verbs = (
        ("to copy", "to update", "unchanged", "to delete")
        if summary.dry_run
        else ("copied", "updated", "unchanged", "deleted")
    )
    parts = [
        f"{d['filesCopied']} {verbs[0]}",
        f"{d['filesUpdated']} {verbs[1]}",
        f"{d['filesSkipped']} {verbs[2]}",
    ]
    if d["filesDeleted"]:
        parts.append(f"{d['filesDeleted']} {verbs[3]}")
    if d["filesFailed"]:
        parts.append(f"{d['filesFailed']} failed")
    if quiet:
        pass  # -q: the errors below only
    elif summary.dry_run:
        say(f"plan: {', '.join(parts)}; {_human(d['bytesTransferred'])} to transfer")
    else:
        say(
            f"{summary.operation}: {', '.join(parts)}; {_human(d['bytesTransferred'])} in {d['elapsedSeconds']:.2f}s"
            f" ({_human(d['bytesPerSecond'])}/s); {d['filesVerified']} verified"
        )
    if summary.fatal:
        say(f"ferry: error: {summary.fatal} [{summary.fatal.kind.reason}]", "error")
    elif summary.error_count:
        say(
            f"ferry: {summary.error_count} error(s); first: {summary.errors[0].message}",
            "warning",
        )


def _cmd_transfer(args: argparse.Namespace) -> int:
    from ferry.mover.endpoints import parse_endpoint
    from ferry.mover.transfer import run_transfer

    if args.command == "plan":
        mode, dry = ("sync" if args.sync else "copy"), True
    else:
        mode, dry = args.command, args.dry_run
    options = _options(args, mode, dry)
    src, dst = parse_endpoint(args.source), parse_endpoint(args.destination)
    if args.command != "plan":
        options, src, dst = _tuned(args, options, src, dst)
    on_action = None
    if dry and not getattr(args, "quiet", False):
        from ferry.mover.plan import Op

        shown = {
            Op.COPY,
            Op.UPDATE,
            Op.DELETE,
            Op.MKDIR,
            Op.SYMLINK,
            Op.HARDLINK,
            Op.META,
            Op.REPLACE,
        }

        def on_action(a: Any) -> None:
            if a.op in shown:
                size = (
                    f" ({a.src.size} B)"
                    if a.src is not None and a.op in (Op.COPY, Op.UPDATE)
                    else ""
                )
                print(
                    f"{a.op.value:<8} {a.rel}{size}",
                    file=sys.stdout if not args.json and args.audit_log != "-" else sys.stderr,
                )

    sink = _sinks(args.progress, args.stats)
    summary = run_transfer(src, dst, options, sink=sink, on_action=on_action)
    _print_summary(summary, args.json, quiet=args.command != "plan" and args.quiet)
    return int(summary.exit_code)


def _cmd_verify(args: argparse.Namespace) -> int:
    from ferry.mover.endpoints import parse_endpoint
    from ferry.mover.verify import verify_trees

    options = _options(args, "copy", False)
    options, src, dst = _tuned(
        args, options, parse_endpoint(args.source), parse_endpoint(args.destination)
    )
    out = sys.stderr if args.json else sys.stdout
    summary = verify_trees(
        src,
        dst,
        options,
        report=lambda d: print(str(d), file=out),
        sink=_sinks(args.progress, args.stats),
    )
    if args.json:
        print(summary.dumps())
    else:
        from ferry.mover.jsonlog import say

        verdict = "identical" if summary.exit_code == 0 else f"{summary.differences} difference(s)"
        if not args.quiet:
            say(f"verify: {summary.files_verified} files compared by content; {verdict}")
        if summary.fatal:
            say(f"ferry: error: {summary.fatal} [{summary.fatal.kind.reason}]", "error")
    return int(summary.exit_code)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["operator"]:
        from ferry.operator.main import run_operator

        return run_operator(argv[1:])
    parser = build_parser(argv[0] if argv and not argv[0].startswith("-") else None)
    args = parser.parse_args(argv)
    from ferry.mover.jsonlog import choose

    try:
        log_format = choose(getattr(args, "log_format", None))
    except ValueError as exc:
        parser.error(str(exc))
    if getattr(args, "log_level", None) and getattr(args, "verbose", 0):
        parser.error("--log-level and -v both set the log level: pass one of them")
    try:
        _setup_logging(
            getattr(args, "verbose", 0),
            log_format,
            getattr(args, "log_level", None),
            getattr(args, "log_file", None),
        )
    except FerryError as err:
        print(f"ferry: error: {err}", file=sys.stderr)
        return err.kind.exit_code
    if args.command in MOVER_COMMANDS:
        from ferry.mover.malloc import tune_gc, tune_malloc

        tune_malloc()
        tune_gc()
    try:
        if args.command in ("copy", "sync", "plan"):
            return _cmd_transfer(args)
        if args.command == "verify":
            return _cmd_verify(args)
        if args.command == "serve":
            from ferry.serve.server import serve

            return serve(args.root, args.listen, args.tls_cert, args.tls_key, args.tls_ca)
        if args.command == "run":
            from ferry.pod.run import run_pod

            return run_pod(args.spec)
    except FerryError as err:
        from ferry.mover.jsonlog import say

        say(f"ferry: error: {err}", "error")
        if getattr(args, "json", False):
            print(json.dumps(err.to_json()))
        return err.kind.exit_code
    except KeyboardInterrupt:
        return ErrorKind.INTERRUPTED.exit_code
    parser.error(f"unknown command {args.command}")
    return 2


def run() -> None:
    """The `ferry` script. A mover command's process ends with `os._exit` once its output
    is flushed: by then its work is flushed to storage and its threads are idle, and
    the interpreter's teardown (freeing every module and object) was ~4 ms of each run."""
    argv = sys.argv[1:]
    if argv[:1] in (["plan"], ["verify"]):
        # Read-only listings end quietly when their reader goes (`ferry plan ... | head`),
        # as `ls` does, instead of reporting the broken pipe as a transient failure.
        import signal

        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    code = main(argv)
    if argv[:1] and argv[0] in MOVER_COMMANDS:
        logging.shutdown()
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except OSError:  # e.g. `ferry plan | head`: the reader has gone
            code = code or 1
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
