"""The sweep commands of ``kdtune``: search | resume | best | finalize | dashboard | export |
report -- their flags and what each runs.

Each command imports what it runs when it runs: the parser (and a refusal it decides) costs
no import of Ray, MLflow, Optuna or torch.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from kdtune.errors import KdtuneError


def add_sweep_commands(sub: Any) -> None:
    """The sweep commands' parsers, added to the ``kdtune`` parser's sub-commands ``sub``."""
    p = sub.add_parser("search", help="run a hyper-parameter sweep from a search-space YAML")
    p.add_argument("space", help="search-space file, e.g. search_spaces/digits_quick.yaml")
    p.add_argument("--name", help="sweep name (default: the file's name:)")
    p.add_argument("--address", help="Ray cluster to join: auto or HOST:PORT (default: local)")
    p.add_argument("--num-samples", type=int, help="override search.num_samples")
    _add_store_flags(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("resume", help="finish a sweep that was interrupted, or add trials")
    p.add_argument("name")
    p.add_argument("--address", help="Ray cluster to join: auto or HOST:PORT (default: local)")
    p.add_argument("--num-samples", type=int, help="the sweep's new total number of trials: "
                   "continue it (finished or not) up to that many")
    _add_store_flags(p)
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("best", help="the best configs of a sweep, from MLflow alone")
    p.add_argument("name", nargs="?", help="sweep name (default: the newest sweep in the store)")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--metric", help="rank by this metric (default: the sweep's objective; "
                   "comma-separated for a Pareto front)")
    p.add_argument("--mode", help="max or min (default: the metric's)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--config-out", help="write the best config as YAML for `kdtune train`")
    p.add_argument("--list", action="store_true", help="list the sweeps in the store instead")
    p.add_argument("--importance", action="store_true",
                   help="Optuna's parameter importances for the sweep's objective(s)")
    _add_store_flags(p)
    p.set_defaults(func=cmd_best)

    p = sub.add_parser("finalize", help="re-train a sweep's best configs on fresh seeds beside "
                       "their baselines; read the test set once")
    p.add_argument("name", nargs="?", help="sweep name (default: the newest sweep in the store)")
    p.add_argument("--top", type=int, default=3, help="finalists: the best K by validation")
    p.add_argument("--seeds", type=int, default=3, help="fresh training seeds each (>= 2)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--address", help="Ray cluster to join: auto or HOST:PORT (default: local)")
    _add_store_flags(p)
    p.set_defaults(func=cmd_finalize)

    p = sub.add_parser("dashboard", help="open a sweep's Optuna study in optuna-dashboard")
    p.add_argument("name", nargs="?", help="sweep name (default: the newest sweep in the store)")
    p.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (default 8080)")
    _add_store_flags(p)
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("export", help="write a sweep's trained student as ONNX or a "
                       "torch.export program, with its config and preprocessing")
    p.add_argument("name", help="sweep name")
    p.add_argument("--trial", help="trial id (default: the sweep's best student)")
    p.add_argument("--format", required=True, help="onnx or pt2 (a torch.export program)")
    p.add_argument("--out", required=True, help="file to write (.onnx or .pt2); a .json with "
                   "the config and preprocessing goes beside it")
    p.add_argument("--register", metavar="MODEL_NAME",
                   help="also register it in the MLflow model registry under this name")
    _add_tracking_flag(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="a self-contained HTML report of one or more sweeps")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="sweep names (default: the newest sweep); several overlay their "
                   "accuracy-vs-alpha curves")
    p.add_argument("--out", help="HTML file to write (default: kdtune-runs/reports/NAME.html)")
    _add_tracking_flag(p)
    p.set_defaults(func=cmd_report)


def _add_tracking_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                   "else the sqlite store ./kdtune-runs/mlflow.db)")


def _add_store_flags(p: argparse.ArgumentParser) -> None:
    _add_tracking_flag(p)
    p.add_argument("--storage", help="Ray Tune storage folder or URI (default ./kdtune-runs/ray)")
    p.add_argument("--study-storage", help="Optuna study storage: an SQLAlchemy URL "
                   "(postgresql://...) or a journal file path (default: the sqlite file "
                   "./kdtune-runs/optuna.db; resume and best: the one the sweep recorded)")


def _local_ray_on_loopback(args: argparse.Namespace) -> None:
    """``--address`` checked for its form; a Ray that kdtune starts itself (no --address)
    listens on 127.0.0.1 only. Ray reads the setting when it is imported, so this comes before
    anything imports Ray."""
    if args.address is not None:
        from kdtune.urls import check_ray_address

        check_ray_address(args.address)
    else:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def _check_num_samples(args: argparse.Namespace) -> None:
    if args.num_samples is not None and args.num_samples < 1:
        raise KdtuneError(f"--num-samples {args.num_samples} must be >= 1")


def cmd_search(args: argparse.Namespace) -> int:
    _local_ray_on_loopback(args)
    _check_num_samples(args)
    from kdtune.tune.sweep import run_sweep

    outcome = run_sweep(args.space, name=args.name, address=args.address,
                        mlflow_uri=args.mlflow_uri, storage=args.storage,
                        study_storage=args.study_storage, num_samples=args.num_samples)
    return _after_sweep(outcome, args)


def cmd_resume(args: argparse.Namespace) -> int:
    _local_ray_on_loopback(args)
    _check_num_samples(args)
    from kdtune.tune.sweep import resume_sweep

    outcome = resume_sweep(args.name, address=args.address, mlflow_uri=args.mlflow_uri,
                           storage=args.storage, study_storage=args.study_storage,
                           num_samples=args.num_samples)
    return _after_sweep(outcome, args)


def _after_sweep(outcome: Any, args: argparse.Namespace) -> int:
    from kdtune.best import show_best

    if outcome.failure:
        print(f"kdtune {args.command}: error: {outcome.failure}", file=sys.stderr)
        return 1
    if not outcome.finished:
        return 1
    from kdtune.urls import redact

    show_best(outcome.name, tracking_uri=outcome.tracking_uri, top=5)
    uri = redact(outcome.tracking_uri)
    browse = (f"open {uri}" if uri.startswith(("http://", "https://"))
              else f"browse with `mlflow ui --backend-store-uri {uri}`")
    print(f"MLflow: {uri} (parent run {outcome.parent_run_id}); {browse}")
    return 0


def _sweep_name(args: argparse.Namespace, tracking_uri: str) -> str:
    """The sweep a command names, else the newest sweep in the store."""
    return str(args.name) if args.name is not None else _newest_sweep(tracking_uri)


def cmd_best(args: argparse.Namespace) -> int:
    """Answered from MLflow alone: the search layer (Ray, torch, the method registry) is not
    imported, so the answer costs what MLflow's own import and queries cost."""
    from kdtune.best import show_best, show_importance, show_sweeps
    from kdtune.mlflow_store import resolve_tracking_uri
    from kdtune.urls import check_storage_flags

    tracking_uri = resolve_tracking_uri(args.mlflow_uri)
    check_storage_flags(args.storage, args.study_storage)
    if args.config_out is not None:
        from kdtune.paths import writable_file

        writable_file(args.config_out, "--config-out")
    if tracking_uri.startswith(("http://", "https://")):
        from kdtune.urls import check_reachable

        check_reachable(tracking_uri, "the MLflow tracking server")
    if args.list:
        show_sweeps(tracking_uri=tracking_uri, fmt=args.format)
        return 0
    name = _sweep_name(args, tracking_uri)
    if args.importance:
        show_importance(name, tracking_uri=tracking_uri, study_storage=args.study_storage,
                        fmt=args.format)
        return 0
    show_best(name, tracking_uri=tracking_uri, top=args.top, metric=args.metric,
              mode=args.mode, fmt=args.format, config_out=args.config_out)
    return 0


def cmd_finalize(args: argparse.Namespace) -> int:
    if args.address is not None:
        from kdtune.urls import check_ray_address

        check_ray_address(args.address)
    from kdtune.finalize import run_finalize, show_finalists
    from kdtune.tune.stores import Store

    store = Store.resolve(args.mlflow_uri, args.storage, args.study_storage)
    name = _sweep_name(args, store.tracking_uri)
    rows, teacher = run_finalize(name, top=args.top, seeds=args.seeds, address=args.address,
                                 mlflow_uri=args.mlflow_uri, storage=args.storage,
                                 study_storage=args.study_storage)
    show_finalists(name, rows, teacher, args.format)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from kdtune.best import sweep_study
    from kdtune.tune.stores import Store

    store = Store.resolve(args.mlflow_uri, args.storage, args.study_storage)
    name = _sweep_name(args, store.tracking_uri)
    study = sweep_study(name, tracking_uri=store.tracking_uri, study_storage=args.study_storage)
    if not 0 < args.port < 65536:
        raise KdtuneError(f"--port {args.port} must be in 1..65535")
    from optuna_dashboard import run_server

    print(f"optuna-dashboard for sweep {name!r} at http://127.0.0.1:{args.port}/ (Ctrl-C "
          "stops it)", flush=True)
    run_server(study.storage, host="127.0.0.1", port=args.port)
    return 0


def _newest_sweep(tracking_uri: str) -> str:
    from kdtune.mlflow_store import require_store
    from kdtune.tracking import Tracker

    require_store(tracking_uri)
    names = Tracker(tracking_uri).sweep_names()
    if not names:
        raise KdtuneError(f"no sweep in {tracking_uri} yet; run `kdtune search` first")
    return names[0]


def cmd_export(args: argparse.Namespace) -> int:
    from kdtune.export import export_student
    from kdtune.mlflow_store import resolve_tracking_uri

    done = export_student(args.name, fmt=args.format, out=args.out, trial=args.trial,
                          register=args.register,
                          tracking_uri=resolve_tracking_uri(args.mlflow_uri))
    print(f"exported {done.label} of sweep {done.sweep!r} (Ray trial {done.trial_id}, MLflow "
          f"run {done.run_id}) to {done.path}; config and preprocessing: {done.sidecar}; "
          f"largest logit difference from the student on a validation batch: "
          f"{done.max_abs_diff:.2g}")
    if done.registered:
        print(f"registered as model {done.registered[0]!r} version {done.registered[1]}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from kdtune.mlflow_store import default_store, resolve_tracking_uri
    from kdtune.paths import writable_file, writable_folder
    from kdtune.sweep_report import REPORTS_DIRNAME, write_report

    if args.out is not None:
        writable_file(args.out, "--out")
    else:
        writable_folder(default_store() / REPORTS_DIRNAME, "the report folder (no --out)")
    uri = resolve_tracking_uri(args.mlflow_uri)
    names = args.names or [_newest_sweep(uri)]
    done = write_report(names, out=args.out, tracking_uri=uri)
    print(f"report of {', '.join(repr(n) for n in names)}: {done.path} "
          f"({len(done.figures)} figures, also logged to each sweep's parent run under "
          f"{done.artifact_dir}/)")
    return 0
