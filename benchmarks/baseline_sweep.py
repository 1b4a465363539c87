"""The plain baseline for benchmark 3a: a KD sweep glued together by hand, as a user would today.

Ray Tune ``Tuner`` + ``OptunaSearch`` (TPE) + ``ASHAScheduler`` + ``MLflowLoggerCallback``, a
function trainable in which every trial loads digits itself (scikit-learn), loads the teacher
checkpoint itself and runs the teacher live on every batch, and a hand-written torch loop.
It mirrors ``search_spaces/digits_quick.yaml``: the same parameters (method none / vanilla /
spherical / two_temperature, alpha, temperature, t_right, t_wrong, hidden, lr), 15 epochs,
batch 64, SGD momentum 0.9 + weight decay 5e-4 + cosine schedule, 16 trials, 2 at a time,
ASHA grace 3 / reduction 2, 1 CPU per trial.

Nothing from kdtune's search layer is used; only the KD loss (``kdtune.methods``) and the
model code (``kdtune.models``), which any user would have in some form. The teacher file is a
``kdtune teacher`` checkpoint (a plain dict: model spec + state_dict), read with torch.load.

    .venv/bin/python -m benchmarks.baseline_sweep --teacher T.pt --storage DIR \\
        --mlflow-uri sqlite:///DIR/mlflow.db [--num-samples 16] [--epochs 15] [--json OUT]

Each trial reports ``train_time_s`` (its own training loop, teacher forward included); the
script writes the sweep's wall time (from its own start, before any import of Ray) and the
sum of the trials' training times to ``--json``.
"""

from __future__ import annotations

import time

T_START = time.time()  # before the heavy imports: the sweep's wall time starts here

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

METHODS = ["none", "vanilla", "spherical", "two_temperature"]


def load_digits_splits(seed: int = 0) -> dict[str, Any]:
    """Digits as tensors: 20% stratified test split, 10% of the rest for validation."""
    import numpy as np
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.images.astype(np.float32)[:, None] / 16.0
    y = digits.target.astype(np.int64)
    x_pool, _, y_pool, _ = train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)
    x_tr, x_val, y_tr, y_val = train_test_split(x_pool, y_pool, test_size=0.1, stratify=y_pool,
                                                random_state=seed)
    mean, std = x_pool.mean(), x_pool.std()
    norm = lambda a: torch.from_numpy((a - mean) / std)  # noqa: E731
    return {"x_train": norm(x_tr), "y_train": torch.from_numpy(y_tr),
            "x_val": norm(x_val), "y_val": torch.from_numpy(y_val)}


def load_teacher(path: str):
    import torch

    from kdtune.models import create_model

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    data = ckpt["data"]
    model = create_model(ckpt["model"]["name"], data["num_classes"], tuple(data["in_shape"]),
                         **ckpt["model"]["kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval().requires_grad_(False)


def train_student(config: dict[str, Any]) -> None:
    """The function trainable: everything a trial needs, it loads itself."""
    import torch
    from ray import tune

    from kdtune.methods import distillation_loss
    from kdtune.models import create_model

    data = load_digits_splits()
    teacher = load_teacher(config["teacher_path"])
    torch.manual_seed(0)
    student = create_model("mlp", 10, (1, 8, 8), hidden=[config["hidden"]])
    epochs, bs = config["epochs"], 64
    opt = torch.optim.SGD(student.parameters(), lr=config["lr"], momentum=0.9,
                          weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    method = config["method"]
    kd = {"alpha": config.get("alpha", 1.0), "temperature": config.get("temperature", 4.0),
          **{k: config[k] for k in ("t_right", "t_wrong") if k in config}}
    x, y = data["x_train"], data["y_train"]
    train_time = 0.0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        student.train()
        order = torch.randperm(len(x))
        for i in range(0, len(x) - bs + 1, bs):
            idx = order[i:i + bs]
            xb, yb = x[idx], y[idx]
            with torch.no_grad():
                t_logits = teacher(xb) if method != "none" else None
            loss = distillation_loss(method, student(xb), t_logits, yb, **kd)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        train_time += time.perf_counter() - start
        student.eval()
        with torch.no_grad():
            acc = (student(data["x_val"]).argmax(1) == data["y_val"]).float().mean().item()
        tune.report({"val_accuracy": acc, "train_time_s": train_time, "epoch": epoch})


def define_space(trial) -> dict[str, Any]:
    """digits_quick's conditional space, define-by-run for OptunaSearch."""
    method = trial.suggest_categorical("method", METHODS)
    if method != "none":
        trial.suggest_float("alpha", 0.1, 0.9)
    if method in ("vanilla", "spherical"):
        trial.suggest_categorical("temperature", [1, 3.5, 10])
    if method == "two_temperature":
        trial.suggest_categorical("t_right", [2, 5])
        trial.suggest_categorical("t_wrong", [10, 20])
    trial.suggest_categorical("hidden", [16, 32, 64])
    trial.suggest_float("lr", 0.01, 0.2, log=True)
    return {"teacher_path": SETTINGS["teacher"], "epochs": SETTINGS["epochs"]}


SETTINGS: dict[str, Any] = {}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="teacher checkpoint (.pt)")
    parser.add_argument("--storage", required=True, help="Ray storage folder")
    parser.add_argument("--mlflow-uri", required=True)
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--json", help="write the timings here")
    args = parser.parse_args(argv)
    SETTINGS.update(teacher=str(Path(args.teacher).resolve()), epochs=args.epochs)

    import optuna
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    tuner = tune.Tuner(
        tune.with_resources(train_student, {"cpu": 1}),
        tune_config=tune.TuneConfig(
            search_alg=OptunaSearch(define_space, metric="val_accuracy", mode="max",
                                    sampler=optuna.samplers.TPESampler(seed=0)),
            scheduler=ASHAScheduler(time_attr="training_iteration", metric="val_accuracy",
                                    mode="max", max_t=args.epochs,
                                    grace_period=3, reduction_factor=2),
            num_samples=args.num_samples, max_concurrent_trials=2),
        run_config=tune.RunConfig(
            name="baseline", storage_path=str(Path(args.storage).resolve()), verbose=1,
            callbacks=[MLflowLoggerCallback(tracking_uri=args.mlflow_uri,
                                            experiment_name="baseline")]))
    t_fit = time.time()
    results = tuner.fit()
    t_done = time.time()
    train = [float(r.metrics.get("train_time_s", 0.0)) for r in results]
    epochs = [int(r.metrics.get("epoch", 0)) for r in results]
    out = {"side": "baseline", "t_start": T_START, "t_fit": t_fit, "t_done": t_done,
           "wall_s": t_done - T_START, "trials": len(results), "train_times": train,
           "train_time_sum": sum(train), "epochs": epochs,
           "errors": sum(r.error is not None for r in results),
           "best_val_accuracy": max((r.metrics.get("val_accuracy", 0.0) for r in results),
                                    default=0.0)}
    if args.json:
        Path(args.json).write_text(json.dumps(out))
    print(json.dumps({k: v for k, v in out.items() if k not in ("train_times", "epochs")}))
    return out


if __name__ == "__main__":
    main()
