"""Typed run configuration.

The YAML files under ``conf/`` are the vocabulary users sweep over; the dataclasses here are
their schema. They are registered in Hydra's ConfigStore as ``base_config`` and sit first in
``conf/config.yaml``'s defaults list, so a misspelt key or a value of the wrong type fails at
composition (before any training) with Hydra's own message. Names that pick an implementation
(activation, optimizer, dataset, model) are checked against the code's tables by
:func:`validate`, also before training starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from bnbench.errors import ConfigError


@dataclass
class ModelConfig:
    """What every model option has. Each option (conf/model/NAME.yaml) names its own schema
    below, so a key of another model (model.depth on alexnet) fails at composition."""

    name: str = MISSING  # mlp | alexnet
    # Weight init: "default" (PyTorch's) or "gaussian" (N(0, init_std^2), biases zero).
    init: str = "default"
    init_std: float = 0.01


@dataclass
class MLPConfig(ModelConfig):
    name: str = "mlp"
    # `depth` hidden layers of `width` units (3x100 as in Ioffe & Szegedy 2015, sec. 4.1).
    depth: int = 3
    width: int = 100
    # Hidden widths, one per layer (e.g. [18, 18, 4]); when set, depth and width are unused.
    widths: Optional[List[int]] = None


@dataclass
class AlexNetConfig(ModelConfig):
    name: str = "alexnet"
    # Five conv layers and two hidden FC layers before the classifier.
    channels: List[int] = field(default_factory=lambda: [32, 64, 96, 96, 64])
    fc_width: int = 256


@dataclass
class NormConfig:
    # What normalizes (bnbench/job/models.py NORMS): bn (batch norm), ln (layer norm: all channels
    # and positions of one sample, GroupNorm with one group as in Wu & He 2018), gn (group
    # norm: `groups` groups of channels per sample), rms (RMSNorm: one sample's features, or
    # channels and positions, over their root mean square, no centring; torch.nn.RMSNorm), none.
    kind: str = "bn"
    # before (Linear/Conv -> norm -> act, Ioffe & Szegedy 2015) | after (Linear/Conv -> act -> norm)
    placement: str = "before"
    # PyTorch convention: running = (1 - momentum) * running + momentum * batch_stat,
    # so PyTorch's 0.1 is Keras' 0.9. The running variance uses the unbiased estimate.
    momentum: float = 0.1
    eps: float = 1e-5
    affine: bool = True
    # Drop the bias of a Linear/Conv whose output goes straight into BN (its mean is
    # subtracted anyway; BN's beta takes its role). Only affects placement=before, and only
    # batch norm: layer and group norm subtract a mean over channels, which does not cancel a
    # per-channel bias.
    drop_bias: bool = False
    # Group norm: channel groups per layer (every layer's width must be a multiple). Wu & He
    # use 32 on ImageNet models; 4 divides every default width here (100; 32-96; 256).
    groups: int = 4
    # Noisy BN (Santurkar et al. 2018, sec. 2.1; bnbench/job/models.py CovariateNoise): after each norm
    # layer, in training, noise N(mu_j, sigma_j^2) per entry with mu_j ~ U(-noise_mean, noise_mean)
    # and sigma_j ~ U(0, noise_std) per unit, redrawn every step. 0 and 0: no noise.
    noise_mean: float = 0.0
    noise_std: float = 0.0


@dataclass
class ActivationConfig:
    name: str = "relu"
    # Keyword arguments for the torch.nn module, e.g. {negative_slope: 0.01} for leaky_relu.
    kwargs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimizerConfig:
    """What every optimizer option has (plain SGD: nothing more); the others add their own
    keys, so optimizer.momentum on adam fails at composition instead of being ignored."""

    name: str = MISSING  # sgd | momentum | nesterov | adam | adamw | rmsprop
    lr: float = 0.1
    weight_decay: float = 0.0


@dataclass
class MomentumConfig(OptimizerConfig):  # momentum, nesterov
    momentum: float = 0.9


@dataclass
class AdamConfig(OptimizerConfig):  # adam, adamw
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class RMSpropConfig(OptimizerConfig):
    alpha: float = 0.99  # smoothing constant
    eps: float = 1e-8
    momentum: float = 0.0


@dataclass
class DatasetConfig:
    name: str = MISSING
    # Where torchvision looks for (and downloads) files; BNBENCH_DATA overrides the default.
    root: str = "${oc.env:BNBENCH_DATA,data}"
    download: bool = True
    # Optional subsets (first N after a seeded shuffle) for quick runs; null = all. train_size
    # picks from the training images left after the validation split.
    train_size: Optional[int] = None
    test_size: Optional[int] = None
    # Standardize inputs per channel (per feature for tabular data), and regression targets,
    # with the training set's mean and std.
    normalize: bool = True
    # Validation split, carved from the training files before any subset, by a generator that
    # does not depend on the run's seed (the same images for every seed and arm): a count of
    # images (1 or more) or a fraction below 1; 0 = no validation split. Selection (the best
    # evaluation, tuned values) uses it, never the test set. The 60,000-image sets use 5,000.
    val_size: float = 0.1


@dataclass
class SyntheticConfig(DatasetConfig):  # friedman1
    features: int = 10  # input features (only the first 5 carry signal)
    noise: float = 1.0  # std of the Gaussian noise added to the target


@dataclass
class TrainerConfig:
    epochs: int = 10
    # If set, train for this many optimizer steps instead of `epochs`.
    steps: Optional[int] = None
    batch_size: int = 60
    # Evaluate on the test set every N steps; null = once per epoch.
    eval_every: Optional[int] = None
    eval_batch_size: int = 2000
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # Torch intra-op threads on CPU; null = auto (the cores divided among parallel workers).
    threads: Optional[int] = None
    # In a sweep on GPUs, how many jobs share one GPU (each job claims a GPU slot).
    jobs_per_gpu: int = 1
    dropout: float = 0.0
    lr_schedule: str = "constant"  # constant | cosine
    # Scale the learning rate linearly with the batch: optimizer.lr is the rate at this batch
    # size, and a run at batch B trains at optimizer.lr x B / lr_reference_batch (Goyal et al.
    # 2017; Wu & He 2018's batch-size study). null: optimizer.lr as it is.
    lr_reference_batch: Optional[int] = None
    # A training loss that is not finite, or above this value, ends the run as "diverged"
    # (cross-entropy starts near ln(classes); a saturated sigmoid net can blow it up to 1e7
    # without ever producing NaN). null: only non-finite losses count.
    diverge_above: Optional[float] = 1000.0
    # Save a resumable checkpoint every N evaluations (0 = never). A rerun of a run that was
    # cut off continues from it and reaches the same final metrics.
    checkpoint_every: int = 1
    # ... but at most one per this many seconds of training (0 = at every N-th evaluation):
    # on a GPU a small model's evaluation interval can take less time than writing its
    # checkpoint. Ctrl-C, SIGTERM and the end of a run do not wait for it.
    checkpoint_every_s: float = 60.0
    # GPU numerics (README "GPUs"): deterministic kernels (cuBLAS workspace, cuDNN,
    # torch.use_deterministic_algorithms), and TensorFloat-32 matmuls and convolutions (faster,
    # about 3 decimal digits). Neither changes a CPU run, nor a run's identity.
    deterministic: bool = False
    tf32: bool = False
    # Keep the model's weights and buffers at the end of the run (at its last evaluation; a
    # diverged run's at the evaluation that saw it) in final.pt, for `bnbench evalmodes`
    # (bnbench/evalmodes.py: BN with batch statistics, recomputed "precise" statistics).
    save_final: bool = False
    # Print one line per evaluation.
    log_progress: bool = True
    # In a sweep over seeds, train the seeds of each cell together as one stacked model
    # (bnbench/job/stacking.py): same results up to float rounding, fewer, larger operations.
    # Runs with an optimizer that is not per-element train one by one.
    stack_seeds: bool = True
    # Most seeds in one stack; null = split each cell's seeds into as few stacks as keep all
    # the parallel workers busy to the end (bnbench.launch.planning.seed_stacks).
    stack_size: Optional[int] = None
    # Convolutional models hold their activations channels-last (NHWC): oneDNN's CPU
    # convolutions are fastest so (docs/benchmarks.md). Same results up to
    # float rounding.
    channels_last: bool = True


@dataclass
class SweepConfig:
    # Name of the sweep folder under results_dir (default: a timestamp).
    name: str = "${now:%Y-%m-%d_%H-%M-%S}"
    # Stop the sweep at the first failed run (bnbench run -m --fail-fast).
    fail_fast: bool = False
    # No live display, only a line per finished run (bnbench run -m --quiet; logs and CI).
    quiet: bool = False
    # Set by the sweeper for each job it launches (bnbench/launch/planning.py): the plan in the sweep
    # folder (.plans/PLAN.json) and this job's entry in it, the runs it trains together.
    plan: Optional[str] = None
    stack: Optional[int] = None
    # Under another sweeper that optimizes (hydra/sweeper=optuna), the number each job returns: a
    # run metric, on the validation split by default (choosing on the test set would overstate it).
    objective: str = "final_val_acc"
    # ... as the mean over this many seeds of one trial (seed, seed+1, ...), trained as one stack,
    # each in its own folder: a trial's value is then less a draw of one seed's noise.
    objective_seeds: int = 1
    # A run another process is training right now (two sweep commands on one folder): false, leave
    # it to that process (the command then ends saying so, exit 75); true, wait for it to finish.
    wait_for_others: bool = False


@dataclass
class DiagnosticsConfig:
    # Per-layer diagnostics into diagnostics.csv: gradient norms, pre-activation statistics,
    # percentiles of the input to the nonlinearity, saturated/dead units, BN batch vs running
    # statistics, train- vs eval-mode accuracy. Off: no cost at all.
    enabled: bool = False
    every: int = 100  # steps between diagnostics steps (step 1 is always one)
    unit: int = 0  # the unit (channel) of each layer whose own percentiles are recorded
    # Train- vs eval-mode accuracy is measured on the first probe_batches x trainer.batch_size
    # test samples (2 batches keep the cost within a few % of a run; more: less noise).
    probe_batches: int = 2
    # Internal covariate shift as Santurkar et al. (2018, Definition 2.1) measure it, per layer on
    # each diagnostics step: ||G - G'|| and cos(G, G') (bnbench/job/ics.py). k + 1 extra passes each.
    ics: bool = False
    # Smoothness of the loss along the gradient (Santurkar et al. 2018, sec. 3): loss variation,
    # gradient change and effective beta-smoothness over steps of lr x each smoothness_steps
    # (bnbench/job/smoothness.py), on each diagnostics step. One extra pass per step size.
    smoothness: bool = False
    smoothness_steps: List[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0])


@dataclass
class Config:
    # model, optimizer, dataset: each option of the group names its schema (conf/model/mlp.yaml:
    # /schema/model/mlp), following Hydra's structured_configs tutorial 5.1
    # Any: a built-in option types itself (its schema in its defaults); a user's option with a
    # _target_ (bnbench/job/models.py build_model) carries keys of its own network
    model: Any = MISSING
    norm: NormConfig = field(default_factory=NormConfig)
    activation: ActivationConfig = field(default_factory=ActivationConfig)
    optimizer: OptimizerConfig = MISSING
    dataset: Any = MISSING  # like model: a user's option with a _target_ carries keys of its own
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    seed: int = 0
    results_dir: str = "${oc.env:BNBENCH_RESULTS,results}"


# One schema per option: conf/GROUP/OPTION.yaml starts with `defaults: [/schema/GROUP/NAME@_here_, _self_]`.
SCHEMAS = [
    ("model", "mlp", MLPConfig), ("model", "alexnet", AlexNetConfig),
    ("optimizer", "sgd", OptimizerConfig), ("optimizer", "momentum", MomentumConfig),
    ("optimizer", "adam", AdamConfig), ("optimizer", "rmsprop", RMSpropConfig),
    ("dataset", "images", DatasetConfig), ("dataset", "synthetic", SyntheticConfig),
]


def register_configs() -> None:
    """The schema, and bnbench's sweeper (hydra/sweeper=bnbench, planned seed stacks), registered
    by hand: Hydra 1.3 does not find plugins of an editable install (hydra#3252)."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.bnbench_sweeper import PlannedSweeper  # also stores its config (hydra/sweeper=bnbench)

    store = ConfigStore.instance()
    store.store(name="base_config", node=Config)
    for group, name, node in SCHEMAS:
        store.store(group=f"schema/{group}", name=name, node=node)
    Plugins.instance().register(PlannedSweeper)
    # conf/hydra/launcher/ray_local.yaml: each Ray job's GPU share where the machine has GPUs
    OmegaConf.register_new_resolver("bnbench_gpu_share", gpu_share, replace=True)


def gpu_share(jobs_per_gpu: Any = 1) -> float:
    """The GPUs one job asks of Ray: 1 / trainer.jobs_per_gpu when this machine shows GPUs, else
    0 (torch-free: launch.resources.visible_gpu_count)."""
    from bnbench.launch.resources import visible_gpu_count

    return 1.0 / max(1, int(jobs_per_gpu)) if visible_gpu_count() else 0.0


def compose_config(*overrides: str, hydra: bool = False) -> DictConfig:
    """The run config ``bnbench run`` composes from these overrides (``hydra=True``: with the
    ``hydra`` node, e.g. a preset's sweep grid), for scripts and tests that train in-process."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def config_dir() -> Path:
    """The folder holding config.yaml and the config groups.

    An editable install maps ``bnbench.conf`` onto the repository's ``conf/``; a regular
    install ships a copy. BNBENCH_CONFIG_DIR points elsewhere (e.g. a lab's own presets).
    """
    env = os.environ.get("BNBENCH_CONFIG_DIR")
    if env:
        return Path(env).resolve()
    package = Path(__file__).resolve().parent
    repo_conf = package.parent / "conf"  # a checkout (editable install)
    if (repo_conf / "config.yaml").is_file():
        return repo_conf
    return package / "conf"  # a wheel ships conf/ as bnbench/conf (pyproject.toml)


FLOAT32_MAX = 3.4028234663852886e38
REQUIRED_NODES = ("model", "norm", "activation", "optimizer", "dataset", "trainer", "diagnostics", "sweep")


def check_complete(cfg: DictConfig) -> None:
    """ConfigError when an override deleted a part of the config bnbench reads (~diagnostics):
    said before the run, in one line, with what to write instead. Torch-free (the sweeper and
    the job both call it)."""
    missing = [key for key in REQUIRED_NODES if key not in cfg]
    if missing:
        key = missing[0]
        instead = {"diagnostics": "diagnostics.enabled=false turns them off"}.get(
            key, f"choose another option of it ({key}=...) or set its keys")
        raise ConfigError(f"~{key} removed the {key} settings, which every run reads: {instead}")


def validate(cfg: DictConfig) -> None:
    """Check the names that select code, so a typo fails before any data is loaded. Called in
    the job (torch side): the tables it checks against are imported here, not at the top, so
    that the launching side (CLI, sweeper) reads configs without importing torch."""
    from bnbench.job.data import DATASETS
    from bnbench.job.models import ACTIVATIONS, MODELS, NORMS, PLACEMENTS, registered
    from bnbench.job.optim import LR_SCHEDULES, OPTIMIZERS

    # names other packages register (entry points bnbench.models / bnbench.datasets) are known too
    MODELS = {**MODELS, **registered("bnbench.models")}  # noqa: N806
    DATASETS = {**DATASETS, **registered("bnbench.datasets")}  # noqa: N806

    custom = "_target_" in cfg.model  # the user's own network (bnbench/job/models.py build_model)
    checks = [
        *([] if custom else [("model.name", cfg.model.name, MODELS)]),
        ("norm.kind", cfg.norm.kind, NORMS),
        ("activation.name", cfg.activation.name, ACTIVATIONS),
        ("optimizer.name", cfg.optimizer.name, OPTIMIZERS),
        *([] if "_target_" in cfg.dataset else [("dataset.name", cfg.dataset.name, DATASETS)]),
        ("trainer.lr_schedule", cfg.trainer.lr_schedule, LR_SCHEDULES),
        ("model.init", cfg.model.get("init", "default"), ("default", "gaussian")),
    ]
    if cfg.norm.placement == "none":  # the 0.1/0.2 spelling of "no normalization"
        raise ConfigError("norm.placement=none is not a placement: no normalization is norm=none "
                          "(or norm.kind=none); placements are before and after")
    if cfg.norm.kind != "none":
        checks.append(("norm.placement", cfg.norm.placement, PLACEMENTS))
    for key, value, allowed in checks:
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not known; choose one of: {', '.join(sorted(allowed))}")
    if cfg.norm.drop_bias and cfg.norm.kind in ("ln", "gn", "rms"):
        why = "subtracts no mean at all" if cfg.norm.kind == "rms" else "subtracts a mean over channels"
        raise ConfigError(f"norm.drop_bias=true applies to batch norm only: {cfg.norm.kind} {why}, which does not "
                          "cancel a per-channel bias")
    noise = (cfg.norm.get("noise_mean", 0.0), cfg.norm.get("noise_std", 0.0))
    if min(noise) < 0:
        raise ConfigError(f"norm.noise_mean={noise[0]} and norm.noise_std={noise[1]} must be 0 or more "
                          "(they bound the ranges the noise's mean and std are drawn from)")
    if max(noise) > 0 and cfg.norm.kind == "none":
        raise ConfigError("norm.noise_mean/noise_std add noise after each norm layer, and norm=none has none: "
                          "use norm=noisy_bn_before (or set norm.kind)")
    # key -> (value, whether null is allowed): counts that must be at least 1
    at_least_one = {
        "trainer.batch_size": (cfg.trainer.batch_size, False),
        "trainer.eval_batch_size": (cfg.trainer.eval_batch_size, False),
        "model.depth": (cfg.model.get("depth"), False),
        "model.width": (cfg.model.get("width"), False),
        "trainer.eval_every": (cfg.trainer.eval_every, True),
        "trainer.jobs_per_gpu": (cfg.trainer.jobs_per_gpu, False),
        "trainer.stack_size": (cfg.trainer.stack_size, True),
        "trainer.threads": (cfg.trainer.threads, True),
        "trainer.lr_reference_batch": (cfg.trainer.get("lr_reference_batch"), True),
        "norm.groups": (cfg.norm.groups, False),
        "dataset.train_size": (cfg.dataset.get("train_size"), True),
        "dataset.test_size": (cfg.dataset.get("test_size"), True),
    }
    for key, (value, nullable) in at_least_one.items():  # None also: a key this option does not have
        if value is not None and value < 1:
            raise ConfigError(f"{key}={value} must be at least 1" + (" (or null)" if nullable else ""))
    if cfg.trainer.steps is None and cfg.trainer.epochs < 1:
        raise ConfigError("trainer.epochs must be at least 1 (or set trainer.steps)")
    if cfg.trainer.steps is not None and cfg.trainer.steps < 1:
        raise ConfigError("trainer.steps must be at least 1")
    if not 0.0 <= cfg.trainer.dropout < 1.0:
        raise ConfigError(f"trainer.dropout={cfg.trainer.dropout} must be in [0, 1)")
    widths = cfg.model.get("widths")
    if widths is not None and (not widths or min(widths) < 1):
        raise ConfigError(f"model.widths={list(widths)} must list at least one width, each at least 1")
    if cfg.dataset.get("noise", 0) < 0:
        raise ConfigError(f"dataset.noise={cfg.dataset.noise} must be 0 or more")
    if not custom and "channels" in cfg.model and len(cfg.model.channels) != 5:
        raise ConfigError("model.channels must list 5 conv widths (AlexNet-style: 5 conv layers)")
    _check_ranges(cfg)
    from bnbench.launch.resources import check_device_name

    check_device_name(cfg.trainer.device)
    if cfg.trainer.checkpoint_every_s < 0:
        raise ConfigError(f"trainer.checkpoint_every_s={cfg.trainer.checkpoint_every_s} must be 0 (every "
                          "trainer.checkpoint_every evaluations) or more")
    if cfg.trainer.checkpoint_every < 0:
        raise ConfigError(f"trainer.checkpoint_every={cfg.trainer.checkpoint_every} must be 0 (off) or more")
    asked = [k for k in ("ics", "smoothness") if cfg.diagnostics.get(k)]
    if asked and not cfg.diagnostics.enabled:  # they are recorded on diagnostics steps only
        raise ConfigError(f"diagnostics.{asked[0]}=true needs diagnostics.enabled=true (it is measured on the "
                          "diagnostics steps, every diagnostics.every steps)")
    if cfg.diagnostics.get("smoothness") and (not cfg.diagnostics.smoothness_steps
                                              or min(cfg.diagnostics.smoothness_steps) <= 0):
        raise ConfigError(f"diagnostics.smoothness_steps={list(cfg.diagnostics.smoothness_steps)} must list positive "
                          "multiples of the learning rate, e.g. [0.5,1,2,4]")
    if cfg.diagnostics.enabled and min(cfg.diagnostics.every, cfg.diagnostics.probe_batches) < 1:
        raise ConfigError(f"diagnostics.every={cfg.diagnostics.every} and diagnostics.probe_batches="
                          f"{cfg.diagnostics.probe_batches} must be at least 1")


_ABSENT = object()


def _get(cfg: DictConfig, key: str) -> Any:
    """The value at ``key``, or _ABSENT where this option's schema has no such key."""
    return OmegaConf.select(cfg, key, default=_ABSENT)


SEED_MAX = 2**63 - 1  # torch.manual_seed and torch.Generator take a 64-bit seed


def _check_ranges(cfg: DictConfig) -> None:
    """Every numeric key that has a valid range: a value outside it ruins a run without failing
    it (BN momentum 2 trains to 8% and is recorded as completed), so it fails here, naming the key."""
    closed = lambda low, high: lambda v: low <= v <= high  # noqa: E731
    half_open = lambda low, high: lambda v: low <= v < high  # noqa: E731
    checks = [
        ("seed", cfg.seed, closed(0, SEED_MAX), f"must be an integer in [0, {SEED_MAX}] (2^63 - 1)"),
        ("norm.momentum", cfg.norm.momentum, closed(0.0, 1.0),
         "must be in [0, 1] (PyTorch's convention: 0.1 is Keras' 0.9; Keras' 0.99 is 0.01 here)"),
        ("norm.eps", cfg.norm.eps, lambda v: v > 0, "must be greater than 0 (it keeps BN from dividing by zero)"),
        ("optimizer.lr", cfg.optimizer.lr, lambda v: 0 < v <= FLOAT32_MAX,
         "must be positive and fit in float32 (at most 3.4e38: the optimizer keeps it in the model's precision)"),
        ("optimizer.weight_decay", cfg.optimizer.weight_decay, lambda v: v >= 0, "must be 0 or more"),
        ("optimizer.momentum", _get(cfg, "optimizer.momentum"), half_open(0.0, 1.0), "must be in [0, 1)"),
        ("optimizer.eps", _get(cfg, "optimizer.eps"), lambda v: v > 0, "must be greater than 0"),
        ("optimizer.alpha", _get(cfg, "optimizer.alpha"), half_open(0.0, 1.0), "must be in [0, 1)"),
        ("model.init_std", cfg.model.get("init_std", 0.01), lambda v: v > 0, "must be greater than 0"),
        ("trainer.diverge_above", cfg.trainer.diverge_above, lambda v: v is None or v > 0,
         "must be greater than 0 (or null: only NaN and inf count as diverged)"),
    ]
    for key, value, ok, rule in checks:
        if value is not _ABSENT and not ok(value):
            raise ConfigError(f"{key}={value} {rule}")
    if "betas" not in cfg.optimizer:
        return
    betas = list(cfg.optimizer.betas)
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ConfigError(f"optimizer.betas={betas} must be two values in [0, 1), e.g. [0.9, 0.999]")
