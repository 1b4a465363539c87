"""``kdtune`` command line: train | teacher | demo (and the search, export, report commands).

User errors (:class:`~kdtune.errors.KdtuneError`, bad flags) print one line on stderr and exit
with code 2, without a traceback and without writing anything.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from kdtune.errors import KdtuneError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (no usage dump); ``commands`` are the
    parsers of its sub-commands, ``flags()`` the long flags it takes."""

    commands: dict[str, _Parser]

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")

    def flags(self) -> list[str]:
        """Every long flag, as its usage line lists them."""
        return list(dict.fromkeys(re.findall(r"(?<![\w-])--[A-Za-z][\w-]*",
                                             self.format_usage())))


class _ListFlag(argparse.Action):
    """A list flag as a user types it: ``--hidden 1200 1200``, ``--hidden 1200-1200`` or
    ``--blocks 1,1,0,0`` (several words are joined with commas)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        words = [values] if isinstance(values, str) else list(values)
        setattr(namespace, self.dest, ",".join(words) if len(words) > 1 else words[0])


# -- flags shared by `train` and `teacher` --------------------------------------------------
def _add_data_and_model_flags(p: argparse.ArgumentParser) -> None:
    S = argparse.SUPPRESS  # unset flags stay out of the overrides, so a --config file wins
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=S, help="digits (default), mnist, fashion_mnist, "
                   "cifar10, cifar100, synthetic")
    g.add_argument("--data-root", default=S, help="folder with torchvision's files")
    g.add_argument("--download", action="store_true", default=S,
                   help="let torchvision download the dataset (needs internet)")
    g.add_argument("--split-seed", type=int, default=S, help="fixes train/val/test (default 0)")
    g.add_argument("--val-fraction", type=float, default=S, help="default 0.1")
    g.add_argument("--train-per-class", type=int, default=S,
                   help="train on only this many images per class")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=S,
                   help="random crop + flip (default: on for CIFAR, off otherwise)")
    g = p.add_argument_group("model")
    g.add_argument("--model", default=S, help="mlp, resnet, wrn or a preset (resnet20, ...)")
    g.add_argument("--hidden", default=S, nargs="+", action=_ListFlag,
                   help="MLP widths, e.g. 1200-1200 or 1200 1200")
    g.add_argument("--dropout", type=float, default=S)
    g.add_argument("--blocks", default=S, nargs="+", action=_ListFlag,
                   help="ResNet blocks per stage, e.g. 1,1,0,0 or 1 1 0 0")
    g.add_argument("--block", default=S, help="basic or bottleneck")
    g.add_argument("--stem-stride", type=int, default=S, help="1, 2 or 4")
    g.add_argument("--width", type=int, default=S, help="ResNet base channels")
    g.add_argument("--depth", type=int, default=S, help="WRN depth")
    g.add_argument("--widen-factor", type=int, default=S, help="WRN k")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=S)
    g.add_argument("--batch-size", type=int, default=S)
    g.add_argument("--lr", type=float, default=S)
    g.add_argument("--momentum", type=float, default=S)
    g.add_argument("--weight-decay", type=float, default=S)
    g.add_argument("--schedule", default=S, help="multistep (default) or cosine")
    g.add_argument("--seed", type=int, default=S, help="init, batch order, augmentation")
    g.add_argument("--device", default=S, help="auto (default), cpu or cuda")
    g.add_argument("--threads", type=int, default=S, help="torch CPU threads")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=S,
                   help="channels_last memory format (default: conv nets on CUDA)")
    g.add_argument("--compile", action="store_true", default=S, help="torch.compile the student")
    p.add_argument("--config", help="YAML file of config keys; flags override it")
    p.add_argument("--out", default=S, help="folder to write results into")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON last")


def _add_kd_flags(p: argparse.ArgumentParser, *, methods: bool) -> None:
    """The distillation flags; with ``methods``, ``--method``'s help and one flag per method
    parameter (``--nckd-weight``), generated from the method registry (which imports torch)."""
    S = argparse.SUPPRESS
    g = p.add_argument_group("distillation")
    g.add_argument("--alpha", type=float, default=S, help="weight of the hard-label loss")
    g.add_argument("--temperature", type=float, default=S)
    g.add_argument("--kd-warmup", type=int, default=S, help="epochs over which the "
                   "distillation term ramps up linearly from 0 (default 0: no warm-up)")
    g.add_argument("--teacher", default=S, help="teacher checkpoint (.pt) from `kdtune teacher`")
    g.add_argument("--teacher-outputs", default=S, help="auto (default): cached teacher logits "
                   "when they exist, else live; cached: compute them (per augmentation view "
                   "when augmenting) once; live: run the teacher on every batch")
    if not methods:
        g.add_argument("--method", default=S)
        g.add_argument("--feature-method", default=S)
        return
    from kdtune.config import TrainConfig
    from kdtune.methods import all_params, list_feature_methods, list_methods, methods_reading
    from kdtune.methods.registry import feature_params

    default = TrainConfig.__dataclass_fields__["method"].default
    g.add_argument("--method", default=S,
                   help=f"the logit term, one of: {', '.join(list_methods())} "
                        f"(default {default})")
    g.add_argument("--feature-method", default=S,
                   help=f"the feature/relation term, one of: {', '.join(list_feature_methods())} "
                        "(default none)")
    g = p.add_argument_group("method parameters (each read by the methods it names)")
    for name, param in all_params().items():
        shown = ("default per feature method" if name in feature_params() else "required"
                 ) if param.required else f"default {param.default}"
        help_ = f"{', '.join(methods_reading(name))}: {param.help} ({param.allowed()}; {shown})"
        if param.type is bool:
            g.add_argument(param.flag, dest=name, action=argparse.BooleanOptionalAction,
                           default=S, help=help_)
        else:
            g.add_argument(param.flag, dest=name, type=param.type, default=S, help=help_,
                           metavar=param.type.__name__.upper())


_NOT_CONFIG = {"command", "config", "json", "func", "retrain", "force"}


def _config_from_args(args: argparse.Namespace, **forced: Any) -> Any:
    """The config of the flags given (and of ``--config``'s file, which they override); a
    value the user gave that changes nothing for the chosen input is refused."""
    from kdtune.config import TrainConfig, load_yaml_mapping
    from kdtune.no_effect import refuse_no_effect

    flags = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}
    data = load_yaml_mapping(args.config) if args.config else {}
    config = TrainConfig.from_dict({**data, **flags, **forced},
                                   where=args.config or "command line")
    shown = {**{k: f"{args.config}: {k}" for k in data},
             **{k: "--" + k.replace("_", "-") for k in flags}}
    refuse_no_effect(config, {k: v for k, v in shown.items() if k not in forced})
    return config


# -- commands -------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from kdtune import report
    from kdtune.trainer import train

    config = _config_from_args(args)
    if config.out:
        _check_run_folder(config.out, force=args.force)
    result = train(config, callbacks=[report.epoch_printer()])
    if config.out:
        report.write_student(result, config.out)
    report.print_metrics(result.metrics, title=f"student ({config.method})")
    if args.json:
        print(json.dumps(report.json_ready(result.metrics)))
    return 0


def _check_run_folder(out: str, *, force: bool) -> None:
    """``--out`` of ``kdtune train``: a folder that can be written, and that holds no finished
    run unless ``--force`` says to replace it."""
    from kdtune.paths import writable_folder
    from kdtune.report import finished_run_files

    done = finished_run_files(writable_folder(out))
    if done and not force:
        raise KdtuneError(f"--out {out} already holds a finished run ({', '.join(done)}); give "
                          "another folder, or add --force to replace it")


def cmd_teacher(args: argparse.Namespace) -> int:
    from kdtune import report
    from kdtune.paths import writable_folder
    from kdtune.teacher_store import obtain_teacher, teachers_folder

    config = _config_from_args(args, method="none", teacher=None)
    writable_folder(teachers_folder(config), "--out")
    path, metrics, reused = obtain_teacher(config, retrain=args.retrain,
                                           callbacks=[report.epoch_printer()])
    report.print_metrics(metrics, title="teacher")
    print(f"teacher checkpoint: {path}" + (" (reused: same config)" if reused else ""))
    if args.json:
        print(json.dumps({**report.json_ready(metrics), "teacher": str(path)}))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from kdtune.demo import run_demo
    from kdtune.paths import writable_folder

    writable_folder(args.out, "--out")
    return run_demo(out=args.out, seeds=args.seeds, as_json=args.json)


def _add_store_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                   "else the sqlite store ./kdtune-runs/mlflow.db)")
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


def cmd_search(args: argparse.Namespace) -> int:
    _local_ray_on_loopback(args)
    from kdtune.tune.sweep import run_sweep

    if args.num_samples is not None and args.num_samples < 1:
        raise KdtuneError(f"--num-samples {args.num_samples} must be >= 1")
    outcome = run_sweep(args.space, name=args.name, address=args.address,
                        mlflow_uri=args.mlflow_uri, storage=args.storage,
                        study_storage=args.study_storage, num_samples=args.num_samples)
    return _after_sweep(outcome, args)


def cmd_resume(args: argparse.Namespace) -> int:
    _local_ray_on_loopback(args)
    from kdtune.tune.sweep import resume_sweep

    if args.num_samples is not None and args.num_samples < 1:
        raise KdtuneError(f"--num-samples {args.num_samples} must be >= 1")
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


def build_parser(*, method_flags: bool = True) -> _Parser:
    """The ``kdtune`` parser. ``method_flags=False`` leaves out ``train``'s flags generated
    from the method registry (which imports torch); ``train`` then takes no abbreviated flag
    either, so what it accepts it also accepts, unchanged, with the method flags (see
    :func:`parse`)."""
    parser = _Parser(prog="kdtune", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="distil (or train) one student and print its metrics",
                       allow_abbrev=method_flags)
    _add_data_and_model_flags(p)
    _add_kd_flags(p, methods=method_flags)
    p.add_argument("--force", action="store_true",
                   help="replace the finished run that --out already holds")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("teacher", help="train (or reuse) a teacher and save its checkpoint")
    _add_data_and_model_flags(p)
    p.add_argument("--retrain", action="store_true",
                   help="train even if --out holds a teacher of the same config")
    # No default for --out here: obtain_teacher falls back to kdtune-runs/teachers, so an
    # ``out:`` in a --config file is not overridden by a flag that was never given.
    p.set_defaults(func=cmd_teacher)

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
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                   "else the sqlite store ./kdtune-runs/mlflow.db)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="a self-contained HTML report of one or more sweeps")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="sweep names (default: the newest sweep); several overlay their "
                   "accuracy-vs-alpha curves")
    p.add_argument("--out", help="HTML file to write (default: kdtune-runs/reports/NAME.html)")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                   "else the sqlite store ./kdtune-runs/mlflow.db)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="teacher on digits, then none vs vanilla KD students")
    p.add_argument("--out", default="kdtune-runs/teachers", help="where the teacher goes")
    p.add_argument("--seeds", type=int, default=3, help="student seeds to average (default 3)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_demo)
    parser.commands = dict(sub.choices)
    return parser


def _version() -> str:
    from kdtune import __version__

    return f"kdtune {__version__}"


_LIST_FLAGS = ("--hidden", "--blocks")


def _join_negative_lists(argv: Sequence[str]) -> list[str]:
    """``--blocks -1,1,0,0`` -> ``--blocks=-1,1,0,0``: argparse would take the value for a flag
    and report "expected one argument" instead of the bad value."""
    out: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        arg = items[i]
        if (arg in _LIST_FLAGS and i + 1 < len(items)
                and re.match(r"-\d", items[i + 1])):
            out.append(f"{arg}={items[i + 1]}")
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


class _UsageError(Exception):
    """A command line argparse accepts but kdtune does not: ``prog: error: message``."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """The command line, parsed without importing torch where that decides it: a command's
    flags are known without the method registry except ``train``'s per-method flags, so
    ``train`` is parsed with the registry's flags only when it asks for help or has words the
    rest does not take. An unknown command or flag is a :class:`_UsageError` with the closest
    one; argparse's own errors (a wrong value) exit with code 2."""
    from kdtune.errors import choose_one, did_you_mean

    parser = build_parser(method_flags=False)
    commands = list(parser.commands)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command is not None and command not in commands:
        raise _UsageError("kdtune", str(choose_one("command", command, commands)))
    full = command == "train" and ("-h" in argv or "--help" in argv)
    if full:
        parser = build_parser(method_flags=True)
    args, extra = parser.parse_known_args(argv)
    if extra and command == "train" and not full:
        parser = build_parser(method_flags=True)
        args, extra = parser.parse_known_args(argv)
    if extra:
        prog = f"kdtune {args.command}"
        flag = next((w.split("=", 1)[0] for w in extra if w.startswith("-")), None)
        if flag is None:
            raise _UsageError(prog, f"unexpected argument {extra[0]!r} (see {prog} --help)")
        known = parser.commands[args.command].flags()
        hint = did_you_mean(flag, known, shown=str) or f" (see {prog} --help)"
        raise _UsageError(prog, f"unknown flag {flag}{hint}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    interactive = argv is None
    argv = _join_negative_lists(sys.argv[1:] if argv is None else argv)
    try:
        args = parse(argv)
    except _UsageError as exc:
        print(f"{exc.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KdtuneError as exc:  # a method plugin that does not load
        print(f"kdtune: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return _run(args, the_command=interactive)
    finally:
        if interactive:  # the kdtune command: a Ctrl-C while it shuts down ends it quietly
            _quiet_exit_on_ctrl_c()


def _quiet_exit_on_ctrl_c() -> None:
    """On the way out (Ray shutting down, writer threads joined): Ctrl-C ends the process at
    once, without a traceback."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run(args: argparse.Namespace, the_command: bool = False) -> int:
    func: Callable[[argparse.Namespace], int] = args.func
    from kdtune.urls import redact

    try:
        return func(args)
    except KdtuneError as exc:
        print(f"kdtune {args.command}: error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        print(f"kdtune {args.command}: {redact(str(exc)) or 'interrupted'}", file=sys.stderr,
              flush=True)
        if the_command:  # it said how to go on: another Ctrl-C ends it silently
            import signal

            signal.signal(signal.SIGINT, signal.SIG_DFL)
        return 130
    except FloatingPointError as exc:  # the training loss diverged
        print(f"kdtune {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: one line here, the traceback in a file
        where = _write_traceback(args.command)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"kdtune {args.command}: internal error: {type(exc).__name__}"
              f"{': ' + redact(first)[:300] if first else ''} (traceback in {where})",
              file=sys.stderr)
        return 1


def _write_traceback(command: str) -> str:
    """Write the current exception's traceback (credentials removed) to a log file."""
    import tempfile
    import time
    import traceback

    from kdtune.cache import cache_root
    from kdtune.urls import redact

    text = redact(traceback.format_exc())
    try:
        folder = cache_root() / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"kdtune-{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        path.write_text(text)
    except OSError:
        fd, name = tempfile.mkstemp(prefix=f"kdtune-{command}-", suffix=".log")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return name
    return str(path)


if __name__ == "__main__":
    sys.exit(main())
