"""kdtune's vocabulary: metric names and their directions, which metrics exist when, and the
MLflow tags and params of the record. Every other module imports these names from here.
"""

from __future__ import annotations

#: Metrics of every epoch (logged to MLflow with ``step`` = the epoch).
EPOCH_METRICS = ("train_loss", "val_accuracy", "val_loss", "lr")
#: Per-epoch metrics a scheduler can rank trials by at a rung.
RUNG_METRICS = ("val_accuracy", "val_loss")
#: A student's CPU latency by batch size: the median wall time (ms) of its timed forward
#: passes (``kdtune.metrics.cpu_latency``: one torch thread, a fixed warm-up and time budget).
LATENCY_FIGURES = {1: "latency_ms_b1", 256: "latency_ms_b256"}
#: The spread of each latency figure by batch size: the interquartile range (ms) of the passes
#: it is the median of, logged beside it.
LATENCY_SPREADS = {1: "latency_ms_b1_iqr", 256: "latency_ms_b256_iqr"}
LATENCY_SPREAD_METRICS = tuple(LATENCY_SPREADS.values())
#: The teacher's latency at batch 256 (timed as a student's) and its spread; ``speedup`` is
#: this figure over the student's ``latency_ms_b256``.
TEACHER_LATENCY, TEACHER_LATENCY_SPREAD = "teacher_latency_ms_b256", "teacher_latency_ms_b256_iqr"
#: What a trained student costs: measured before its first epoch and sent with every result,
#: so early stopping can weigh them at every rung (with the latency spreads, not objectives).
COST_METRICS = ("params", "flops", *LATENCY_FIGURES.values(), "speedup")
#: The teacher's figures, reported beside a student's.
TEACHER_METRICS = ("teacher_params", "teacher_test_accuracy", TEACHER_LATENCY,
                   TEACHER_LATENCY_SPREAD)
#: Metrics a method's extra parts report (dml: the best of its peers).
PART_METRICS = ("best_peer_val_accuracy",)
#: Spread over a trial's training seeds (sample sd of ``<metric>``), when it trains several.
SPREAD_METRICS = ("val_accuracy_sd", "test_accuracy_sd")
#: Metrics of a trial's end, logged once when it ends.
FINAL_METRICS = ("val_accuracy", "val_loss", "test_accuracy", *SPREAD_METRICS, *COST_METRICS,
                 *LATENCY_SPREAD_METRICS, "train_time_s", *TEACHER_METRICS, *PART_METRICS,
                 "epoch")
#: Metrics a sweep may optimise (``test_accuracy`` is reported, never optimised).
OBJECTIVE_METRICS = ("val_accuracy", "val_loss", *COST_METRICS, "train_time_s")

#: The direction of every metric kdtune reports.
MODES = {
    "val_accuracy": "max", "test_accuracy": "max", "speedup": "max",
    "teacher_test_accuracy": "max",
    "train_loss": "min", "val_loss": "min", "lr": "min", "params": "min", "flops": "min",
    "latency_ms_b1": "min", "latency_ms_b256": "min", "train_time_s": "min", "epoch": "max",
    "latency_ms_b1_iqr": "min", "latency_ms_b256_iqr": "min",
    "val_accuracy_sd": "min", "test_accuracy_sd": "min", "best_peer_val_accuracy": "max",
    "teacher_params": "min", "teacher_latency_ms_b256": "min",
    "teacher_latency_ms_b256_iqr": "min",
}
DIRECTIONS = ("max", "min")

# -- MLflow: tags and params of the record -----------------------------------------------------
TAG_KIND = "kdtune.kind"  # "sweep" (parent run) or "trial" (child run)
TAG_SWEEP = "kdtune.sweep"
TAG_TRIAL_ID = "kdtune.trial_id"  # the Ray trial id of a child run
TAG_READABLE_ID = "kdtune.id"  # a child run's readable id (see trial_label, finalist_label)
TAG_UNUSED = "kdtune.unused_params"  # comma-joined config keys the run's methods do not read
TAG_PARENT = "mlflow.parentRunId"
TAG_RUNG = "kdtune.rung"  # the epoch at which early stopping ended a KILLED trial
TAG_ERROR = "kdtune.error"  # the error of a FAILED trial, one line
TAG_TRACEBACK = "kdtune.traceback"  # the traceback of a FAILED trial
TAG_RETRIES = "kdtune.retries"  # times a trial continued from its checkpoint after its worker died
TAG_NODE = "kdtune.node_id"  # the Ray node a trial ran on
TAG_STORAGE = "kdtune.storage"  # the sweep's Ray experiment folder (the latest segment)
TAG_SPACE = "kdtune.space_file"
TAG_SPACE_SHA = "kdtune.space_sha256"
TAG_STUDY = "kdtune.study_storage"  # the Optuna study's storage URL, credentials removed
TAG_VERSION = "kdtune.version"
TAG_VERSIONS = "kdtune.versions"  # JSON: the versions of kdtune, torch, ray, optuna, mlflow
TAG_TEACHER_FINGERPRINT = "kdtune.teacher_fingerprint"
TAG_GIT_SHA = "kdtune.git_sha"
TAG_RAY_ADDRESS = "kdtune.ray_address"
TAG_NUM_SAMPLES = "kdtune.num_samples"  # the sweep's number of trials (extending raises it)
#: JSON list on a sweep's parent run, one entry per run of a driver that trained for it
#: (``{"kind": one of DRIVER_RUN_KINDS, "start": ms, "end": ms or null}``, times in epoch
#: milliseconds; ``end`` is null while it runs, or when its driver was killed)
TAG_DRIVER_RUNS = "kdtune.driver_runs"
DRIVER_RUN_KINDS = ("search", "resume", "extend", "finalize")
TAG_STAGE = "kdtune.stage"  # "final" on a finalist run (kdtune finalize); absent on trials
STAGE_FINAL = "final"
TAG_ROLE = "kdtune.role"  # a finalist run's role: one of FINAL_ROLES
ROLE_KD, ROLE_ALONE, ROLE_TEACHER = "kd", "student_alone", "teacher"
FINAL_ROLES = (ROLE_KD, ROLE_ALONE, ROLE_TEACHER)
TAG_EXPORT_FORMAT = "kdtune.format"  # a registered model version's file format (kdtune export)
TAG_FINALIST = "kdtune.finalist"  # the sweep trial whose configuration a finalist run trains
#: "true" on the finalist runs of trials that the latest ``kdtune finalize`` did not choose
#: (they keep their runs and leave its table); "false" on those it chose
TAG_OUT_OF_TOP = "kdtune.out_of_top"
PARAM_OBJECTIVE_METRICS = "objective.metrics"
PARAM_OBJECTIVE_MODES = "objective.modes"
PARAM_SEARCHED = "searched"
PARAM_SAMPLER_SEED = "sampler_seed"  # the seed the sweep's sampler was started with
PARAM_TEACHER = "teacher"



# -- readable run ids ------------------------------------------------------------------------
def trial_label(sweep: str, number: int) -> str:
    """A search trial's readable id: the sweep and its Optuna trial number, ``NAME#12``."""
    return f"{sweep}#{number}"


def finalist_label(trial: str, role: str, seed: int) -> str:
    """A finalist run's readable id, from the readable id of the trial it re-trains:
    ``NAME#12/seed3`` (distilled), ``NAME#12/alone/seed3`` (its student-alone baseline)."""
    return f"{trial}/seed{seed}" if role == ROLE_KD else f"{trial}/alone/seed{seed}"


def teacher_label(sweep: str) -> str:
    """The readable id of a sweep's teacher run (read on the test set by finalize)."""
    return f"{sweep}/teacher"
