"""``kdtune`` command line: train | teacher | demo (and the search commands).

User errors (:class:`~kdtune.errors.KdtuneError`, bad flags) print one line on stderr and exit
with code 2, without a traceback and without writing anything.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from kdtune.errors import KdtuneError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


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
    g.add_argument("--hidden", default=S, help="MLP widths, e.g. 1200-1200")
    g.add_argument("--dropout", type=float, default=S)
    g.add_argument("--blocks", default=S, help="ResNet blocks per stage, e.g. 1,1,0,0")
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
    p.add_argument("--config", help="YAML file of config keys; flags override it")
    p.add_argument("--out", default=S, help="folder to write results into")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON last")


def _add_kd_flags(p: argparse.ArgumentParser) -> None:
    S = argparse.SUPPRESS
    g = p.add_argument_group("distillation")
    g.add_argument("--method", default=S, help="none, vanilla (default), spherical, rkd_v1..v4, "
                   "two_temperature, earth_mover")
    g.add_argument("--alpha", type=float, default=S, help="weight of the hard-label loss")
    g.add_argument("--temperature", type=float, default=S)
    g.add_argument("--t-right", type=float, default=S, help="two_temperature: T when right")
    g.add_argument("--t-wrong", type=float, default=S, help="two_temperature: T when wrong")
    g.add_argument("--teacher", default=S, help="teacher checkpoint (.pt) from `kdtune teacher`")


_NOT_CONFIG = {"command", "config", "json", "func", "retrain"}


def _config_from_args(args: argparse.Namespace, **forced: Any) -> Any:
    from kdtune.config import TrainConfig

    given = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}
    given.update(forced)
    if args.config:
        return TrainConfig.from_yaml(args.config, **given)
    return TrainConfig.from_dict(given, where="command line")


# -- commands -------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from kdtune import report
    from kdtune.trainer import train

    config = _config_from_args(args)
    result = train(config, callbacks=[report.epoch_printer()])
    if config.out:
        report.write_student(result, config.out)
    report.print_metrics(result.metrics, title=f"student ({config.method})")
    if args.json:
        print(json.dumps(report.json_ready(result.metrics)))
    return 0


def cmd_teacher(args: argparse.Namespace) -> int:
    from kdtune import report
    from kdtune.teacher_store import obtain_teacher

    config = _config_from_args(args, method="none", teacher=None)
    path, metrics, reused = obtain_teacher(config, retrain=args.retrain,
                                           callbacks=[report.epoch_printer()])
    report.print_metrics(metrics, title="teacher")
    print(f"teacher checkpoint: {path}" + (" (reused: same config)" if reused else ""))
    if args.json:
        print(json.dumps({**report.json_ready(metrics), "teacher": str(path)}))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from kdtune.demo import run_demo

    return run_demo(out=args.out, seeds=args.seeds, as_json=args.json)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kdtune", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="distil (or train) one student and print its metrics")
    _add_data_and_model_flags(p)
    _add_kd_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("teacher", help="train (or reuse) a teacher and save its checkpoint")
    _add_data_and_model_flags(p)
    p.add_argument("--retrain", action="store_true",
                   help="train even if --out holds a teacher of the same config")
    p.set_defaults(func=cmd_teacher, out="kdtune-runs/teachers")

    p = sub.add_parser("demo", help="teacher on digits, then none vs vanilla KD students")
    p.add_argument("--out", default="kdtune-runs/teachers", help="where the teacher goes")
    p.add_argument("--seeds", type=int, default=3, help="student seeds to average (default 3)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


def _version() -> str:
    from kdtune import __version__

    return f"kdtune {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KdtuneError as exc:
        print(f"kdtune {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"kdtune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
