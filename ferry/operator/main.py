"""`ferry operator`: parse the command line, wire the reconcilers, run kopf.

One replica, standalone (no peering: two operators with equal priority
freeze each other during rolling updates — the chart uses the Recreate
strategy), the liveness endpoint on, failing when the watches went quiet.
"""

from __future__ import annotations

import argparse
import os

import kopf
from pydantic import ValidationError

from ferry import version
from ferry.mover.jsonlog import ENV, FORMATS, choose
from ferry.mover.spec import spec_errors
from ferry.operator import api, logs, memreport, workload
from ferry.operator.handlers import Deps, WatchHealth, register
from ferry.operator.kube import Kube, load_config
from ferry.operator.metrics import Metrics
from ferry.operator.schedule import ScheduleReconciler
from ferry.operator.shutdown import Shutdown
from ferry.operator.tracing import Tracer
from ferry.operator.transferjob import TransferJobReconciler

PASSTHROUGH_ENV_PREFIXES = ("OTEL_",)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _mover_pod(text: str) -> api.MoverPod:
    """The chart's `moverPod` value (JSON), validated by the model a TransferJob's spec.pod uses."""
    try:
        return api.MoverPod.model_validate_json(text or "{}")
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(spec_errors(exc)) from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ferry operator", description="Run the Ferry operator.")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable)",
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="watch every namespace (default)"
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("FERRY_METRICS_PORT", "8080")),
        help="Prometheus endpoint port; 0 disables",
    )
    p.add_argument("--metrics-address", default=os.environ.get("FERRY_METRICS_ADDRESS", "0.0.0.0"))
    p.add_argument(
        "--liveness",
        default=os.environ.get("FERRY_LIVENESS", "http://0.0.0.0:8081/healthz"),
        help="kopf liveness endpoint URL; 'off' disables",
    )
    p.add_argument(
        "--liveness-stale-seconds",
        type=float,
        default=900.0,
        help="fail liveness after this long without a watch event while objects exist",
    )
    p.add_argument(
        "--watch-timeout", type=int, default=300, help="server-side watch timeout (re-list period)"
    )
    p.add_argument(
        "--poll-interval",
        type=_positive,
        default=float(os.environ.get("FERRY_POLL_INTERVAL", "2")),
        help="seconds between checks of each TransferSchedule (time is what fires them)",
    )
    p.add_argument(
        "--resync-interval",
        type=_positive,
        default=300.0,
        help="seconds between reconciles of an unfinished TransferJob when no event woke it "
        "(the safety net for a missed watch event)",
    )
    p.add_argument(
        "--retry-interval",
        type=_positive,
        default=10.0,
        help="seconds between retries of a TransferJob the operator's RBAC refused",
    )
    p.add_argument(
        "--shutdown-timeout",
        type=_positive,
        default=10.0,
        help="after SIGTERM, exit within this many seconds even if a call is still in flight "
        "(keep it below the pod's terminationGracePeriodSeconds)",
    )
    p.add_argument(
        "--mover-image", default=os.environ.get("FERRY_IMAGE", workload.MoverSettings.image)
    )
    p.add_argument(
        "--mover-image-pull-policy",
        default=os.environ.get("FERRY_IMAGE_PULL_POLICY", "IfNotPresent"),
    )
    p.add_argument(
        "--progress-interval",
        type=float,
        default=2.0,
        help="seconds between a mover's status patches",
    )
    p.add_argument(
        "--mover-run-as-user",
        type=int,
        default=workload.MOVER_UID,
        help="uid (and gid, fsGroup) of unprivileged mover pods",
    )
    p.add_argument(
        "--mover-pod-defaults",
        type=_mover_pod,
        default=api.MoverPod(),
        metavar="JSON",
        help="defaults of every TransferJob's spec.pod (security context, service account, "
        "labels, annotations, pull secrets, CA bundle, proxy), which each TransferJob overrides",
    )
    p.add_argument("--kubeconfig", default=None)
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument(
        "--log-format",
        choices=FORMATS,
        default=None,
        help="log lines as text, or one JSON object a line, movers too "
        "(default: $FERRY_LOG_FORMAT, else text)",
    )
    return p


def mover_settings(args: argparse.Namespace, log_format: str) -> workload.MoverSettings:
    """What the movers get from the operator's command line and environment: OTEL_* passed
    on, and the log format when it is JSON (so one pipeline parses both)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k.startswith(PASSTHROUGH_ENV_PREFIXES) and k != "OTEL_SERVICE_NAME"
    }
    if log_format == "json":
        env[ENV] = "json"
    return workload.MoverSettings(
        image=args.mover_image,
        image_pull_policy=args.mover_image_pull_policy,
        env=env,
        progress_interval_seconds=args.progress_interval,
        run_as_user=args.mover_run_as_user,
        pod=args.mover_pod_defaults,
    )


def run_operator(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    # kopf derives its identity from getpass.getuser(), which raises for a uid
    # without a passwd entry (any `runAsUser` the image does not know).
    os.environ.setdefault("USER", "ferry-operator")
    try:
        log_format = choose(args.log_format)
    except ValueError as exc:
        parser().error(str(exc))
    logs.configure(verbose=args.verbose, log_format=log_format)
    memreport.start_from_env()
    memreport.start_trimmer()
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    load_config(args.kubeconfig)

    metrics = Metrics(version=version())
    if args.metrics_port:
        metrics.serve(args.metrics_port, args.metrics_address)
    tracer = Tracer()
    settings = mover_settings(args, log_format)
    kube = Kube()
    deps = Deps(
        kube=kube,
        transferjobs=TransferJobReconciler(kube, settings, metrics, tracer),
        schedules=ScheduleReconciler(kube, metrics, tracer),
        metrics=metrics,
        health=WatchHealth(stale_after=args.liveness_stale_seconds),
        poll_interval=args.poll_interval,
        watch_timeout=args.watch_timeout,
        resync_interval=args.resync_interval,
        retry_interval=args.retry_interval,
    )
    registry = kopf.OperatorRegistry()
    register(registry, deps)
    stop = Shutdown(kube, args.shutdown_timeout)
    try:
        stop.run(
            lambda: kopf.operator(
                registry=registry,
                standalone=True,
                clusterwide=not args.namespace,
                namespaces=args.namespace,
                liveness_endpoint=None if args.liveness == "off" else args.liveness,
                stop_flag=stop.flag,
            )
        )
    finally:
        tracer.shutdown()
        deps.executor.shutdown(wait=False, cancel_futures=True)
    return 0


def main() -> None:  # pragma: no cover - convenience for `python -m ferry.operator.main`
    import sys

    sys.exit(run_operator(sys.argv[1:]))


if __name__ == "__main__":  # pragma: no cover
    main()
