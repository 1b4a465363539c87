"""``kdtune`` commands: train, teacher, demo, space-schema; the sweep commands come from cli_sweep.

The sweep commands (search, resume, best, finalize, dashboard, export, report) are in
:mod:`kdtune.cli_sweep`.

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

from kdtune.cli_sweep import add_sweep_commands
from kdtune.errors import KdtuneError
from kdtune.train_flags import LIST_FLAGS, add_config_flags, add_method_flags

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


# -- flags shared by `train` and `teacher` --------------------------------------------------
def _add_data_and_model_flags(p: argparse.ArgumentParser) -> None:
    S = argparse.SUPPRESS  # unset flags stay out of the overrides, so a --config file wins
    for group in ("data", "model", "training"):
        add_config_flags(p, group)
    p.add_argument("--config", help="YAML file of config keys; flags override it")
    p.add_argument("--out", default=S, help="folder to write results into")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON last")


def _add_kd_flags(p: argparse.ArgumentParser, *, methods: bool) -> None:
    """The distillation flags; with ``methods``, ``--method``'s help and one flag per method
    parameter (``--nckd-weight``), generated from the method registry's metadata."""
    add_method_flags(add_config_flags(p, "distillation"), p, methods=methods)


_NOT_CONFIG = {"command", "config", "json", "func", "retrain", "force"}


def _config_from_args(args: argparse.Namespace, **forced: Any) -> Any:
    """The config of the flags given (and of ``--config``'s file, which they override); a
    value the user gave that changes nothing for the chosen input is refused."""
    from kdtune.config import load_yaml_mapping
    from kdtune.no_effect import refuse_no_effect
    from kdtune.resolve import check_model_options, config_from_dict

    flags = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}
    data = load_yaml_mapping(args.config) if args.config else {}
    config = config_from_dict({**data, **flags, **forced}, where=args.config or "command line")
    check_model_options(config)
    shown = {**{k: f"{args.config}: {k}" for k in data},
             **{k: "--" + k.replace("_", "-") for k in flags}}
    refuse_no_effect(config, {k: v for k, v in shown.items() if k not in forced})
    return config


# -- commands -------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    config = _config_from_args(args)  # refusals of bad input come before torch is imported
    from kdtune import report
    from kdtune.trainer import train

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
    # refusals of bad input come before torch is imported
    config = _config_from_args(args, method="none", teacher=None)
    from kdtune import report
    from kdtune.paths import writable_folder
    from kdtune.teacher_store import obtain_teacher, teachers_folder

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


def cmd_space_schema(args: argparse.Namespace) -> int:
    from kdtune.tune.space_schema import print_json_schema

    return print_json_schema()


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

    add_sweep_commands(sub)

    p = sub.add_parser("demo", help="teacher on digits, then none vs vanilla KD students")
    p.add_argument("--out", default="kdtune-runs/teachers", help="where the teacher goes")
    p.add_argument("--seeds", type=int, default=3, help="student seeds to average (default 3)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("space-schema", help="print the JSON Schema of search-space files (for "
                       "an editor: # yaml-language-server: $schema=space.schema.json)")
    p.set_defaults(func=cmd_space_schema)
    parser.commands = dict(sub.choices)
    return parser


def _version() -> str:
    from kdtune import __version__

    return f"kdtune {__version__}"




def _join_negative_lists(argv: Sequence[str]) -> list[str]:
    """``--blocks -1,1,0,0`` -> ``--blocks=-1,1,0,0``: argparse would take the value for a flag
    and report "expected one argument" instead of the bad value."""
    out: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        arg = items[i]
        if (arg in LIST_FLAGS and i + 1 < len(items)
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
