"""One typed configuration: defaults -> recipe file -> command-line flags.

Every option is declared once, here, with its type, default, unit and help.
A recipe file (``--config FILE``, JSON: option names as keys) overrides the
defaults and flags override the recipe. Unknown keys, wrong types and values
outside their choices are errors (exit 2), never silently ignored.
"""
from __future__ import annotations

import argparse
import json
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

from .cli import ArgumentParser, UsageError

MODES = ("train", "val", "train_val", "io", "inference")
DEVICES = ("gpu", "cpu")
KV_STORES = ("device", "local", "nccl", "dist_sync", "dist_device_sync", "horovod")
DIST_KV_STORES = ("dist_sync", "dist_device_sync")
ENGINES = ("mxnet", "torch")


def option(default, *flags: str, help: str, choices: Optional[Sequence] = None, metavar: str = None):
    """A config field: ``flags`` are its command-line spellings (the first
    long one is canonical), ``help`` ends with its unit where it has one."""
    return field(default=default, metadata={"flags": flags, "help": help, "choices": choices, "metavar": metavar})


def derived(default, *, help: str):
    """A config field no flag or recipe sets: resolve() fills it from what was given."""
    return field(default=default, metadata={"flags": (), "help": help, "choices": None, "metavar": None})


@dataclass(frozen=True)
class Config:
    # --- what to run
    self_test: bool = option(False, "--self-test",
                             help="check this machine's readiness (versions, GPUs, a few training steps, the "
                                  "input pipelines, an allreduce over -n devices) and exit: 0 when all passed")
    mode: str = option("train_val", "--mode", choices=MODES,
                       help="train_val, train, val, io (only the input pipeline, to measure it), or inference "
                            "(forward passes only, to measure img/s and latency per batch)")
    engine: str = option("mxnet", "--engine", choices=ENGINES,
                         help="framework that trains: mxnet (Gluon; the reference) or torch (PyTorch: the GPUs "
                              "MXNet cannot run, Hopper and newer, and bfloat16 on CPUs); same data, recipes, "
                              "checkpoint rules and reports")
    # --- devices
    num_devices: int = option(1, "-n", "--num-devices", "--ngpus", metavar="N",
                              help="devices on this machine (GPUs 0..N-1, or N CPU contexts)")
    device: Optional[str] = option(None, "--device", choices=DEVICES,
                                   help="gpu, or cpu: the same data-parallel path on CPU contexts "
                                        "(None: gpu when MXNet sees one)")
    # --- data
    data_root: Optional[str] = option(None, "--data-root", metavar="DIR",
                                      help="folder with train.rec/.idx and val.rec/.idx (data_prep/)")
    data_backend: Optional[str] = option(None, "--data-backend",
                                         choices=("dali-gpu", "dali-cpu", "mxnet", "synthetic", "nvjpeg"),
                                         help="input pipeline; synthetic: random tensors, no I/O; nvjpeg "
                                              "(--engine torch, no DALI): JPEGs decoded by nvJPEG and augmented "
                                              "on the GPU (OpenCV on --device cpu, for tests) "
                                              "(None: dali-gpu on GPUs, dali-cpu on CPUs)")
    batch_size: int = option(192, "-b", "--batch-size", metavar="B", help="images per device per step")
    image_size: int = option(224, "--image-size", metavar="S", help="network input side, pixels")
    dtype: str = option("float32", "--dtype", choices=("float32", "float16", "bfloat16", "int8"),
                        help="precision: float32, float16 (GPUs), bfloat16 (--engine torch: autocast, on GPUs "
                             "and CPUs), or int8 (--mode val and inference on CPUs: the float32 model quantized "
                             "by MXNet's oneDNN quantization after calibration)")
    compile: bool = option(False, "--compile", help="--engine torch: compile the model with torch.compile")
    calib_images: int = option(200, "--calib-images", metavar="N",
                               help="--dtype int8: images the float32 model runs on to set the INT8 ranges "
                                    "(read from the val set; synthetic batches with --data-backend synthetic)")
    calib_mode: str = option("naive", "--calib-mode", choices=("naive", "entropy"),
                             help="--dtype int8: ranges from each layer's min/max (naive) or minimizing the KL "
                                  "divergence of the quantized distribution (entropy: slower)")
    input_layout: str = option("NCHW", "--input-layout", choices=("NCHW", "NHWC"),
                               help="layout of the batches the pipeline emits")
    augment: str = option("imagenet", "--augment", choices=("imagenet", "cifar"),
                          help="augmentation recipe")
    min_random_area: float = option(0.08, "--min-random-area", metavar="F",
                                    help="smallest random crop, fraction of the image area (imagenet)")
    rect_val: bool = option(False, "--rect-val", help="rectangular validation batches (imagenet18)")
    dali_threads: Optional[int] = option(None, "--dali-threads", metavar="T",
                                         help="decoding threads per device pipeline (default: cores / devices; for "
                                              "dali-gpu at most 6, NVIDIA's value: nvJPEG preallocates memory per thread)")
    bad_records: str = option("fail", "--bad-records", choices=("fail", "skip"),
                              help="a record that does not decode: fail (stop, naming the record and file) or "
                                   "skip (leave it out, warn, count it in the report; DALI backends)")
    num_classes: int = option(1000, "--num-classes", metavar="C", help="classes (labels of synthetic data)")
    num_examples: int = option(1281167, "--num-examples", metavar="N",
                               help="images per epoch of synthetic data")
    seed: int = option(0, "--seed", help="seed of sampling, augmentation and initialisation (an MLPerf closed run "
                                         "without --seed draws one from the system's randomness source and logs it)")
    seed_drawn: bool = derived(False, help="the seed was drawn (--mlperf-log, closed division, no --seed): the run "
                                           "takes rank 0's draw on every worker, or a resumed checkpoint's seed")
    # --- model
    arch: str = option("resnetv15", "--arch", choices=("resnetv1", "resnetv15", "resnet9"),
                       help="network family (resnet9: the DAWNBench CIFAR-10 network)")
    num_layers: int = option(50, "--num-layers", choices=(18, 34, 50, 101, 152),
                             help="ResNet depth (ignored by resnet9)")
    init_bn0: bool = option(False, "--init-bn0", help="zero gamma of the last BatchNorm in each residual block")
    # --- precision and devices
    loss_scale: Optional[str] = option(None, "--loss-scale", metavar="S",
                                       help="float16: a static loss scale, or 'dynamic' (default)")
    kv_store: str = option("device", "--kv-store", choices=KV_STORES,
                           help="gradient aggregation: device/local/nccl within this machine; dist_sync or "
                                "dist_device_sync: MXNet's parameter server across workers and machines "
                                "(--engine torch: torch.distributed data parallel, one device per worker); "
                                "horovod (MXNet; optional extra, one device per process, started by horovodrun)")
    # --- several workers (--kv-store dist_sync|dist_device_sync)
    nnodes: int = option(1, "--nnodes", metavar="N", help="machines in the job")
    node_rank: int = option(0, "--node-rank", metavar="R", help="this machine's index, 0..N-1 (0 runs the scheduler)")
    master_addr: str = option("127.0.0.1", "--master-addr", metavar="HOST",
                              help="address of node 0, where the scheduler listens")
    master_port: Optional[int] = option(None, "--master-port", metavar="PORT",
                                        help="the scheduler's port (default: a free one on a single machine, "
                                             "9000 across machines)")
    num_servers: int = option(1, "--num-servers", metavar="S", help="parameter servers started on each machine")
    local_workers: int = option(1, "--local-workers", metavar="W",
                                help="workers started on this machine, each training on its own -n devices")
    sample_log: Optional[str] = option(None, "--sample-log", metavar="DIR",
                                       help="write, per worker and epoch, the dataset positions fed and the labels "
                                            "each device received, step by step, to DIR/rank-R-epoch-E.json "
                                            "(-from-SSSSSS when resumed mid-epoch; DALI backends; for checking "
                                            "sharding and resumes: reads every label back to the host)")
    disp_batches: int = option(0, "--disp-batches", metavar="N",
                               help="print a line every N steps: loss and img/s since the last line, LR "
                                    "(0: only a line per epoch; each line reads the loss back from the devices)")
    # --- optimizer and schedule
    num_epochs: int = option(90, "-e", "--num-epochs", metavar="E", help="epochs (ignored with --phases)")
    lr: float = option(0.1, "--lr", metavar="LR",
                       help="learning rate per 256 images: the base LR is lr x global batch / 256")
    lr_schedule: str = option("step", "--lr-schedule", choices=("step", "cosine", "onecycle", "poly"),
                              help="step: warmup + decays; cosine: warmup + cosine to 0; onecycle; poly: warmup + "
                                   "end + (base - end) x (1 - t/T)^power to --end-lr (MLPerf's)")
    end_lr: float = option(1e-4, "--end-lr", metavar="LR",
                           help="poly schedule: the LR at the end of the last iteration (absolute, not per 256 images)")
    lr_power: float = option(2.0, "--lr-power", metavar="P", help="poly schedule: the power of the decay (MLPerf: 2)")
    warmup_epochs: float = option(5.0, "--warmup-epochs", metavar="W", help="linear warmup from 0, epochs")
    lr_factor: float = option(0.1, "--lr-factor", metavar="F", help="step schedule: LR multiplier at each decay")
    lr_steps: str = option("30,60,80", "--lr-steps", metavar="E1,E2,..", help="step schedule: decay epochs")
    optimizer: str = option("sgd", "--optimizer", choices=("sgd", "lars"),
                            help="sgd (Nesterov with --nesterov), or lars: SGD with momentum and a layer-wise trust "
                                 "ratio, as MLPerf's ResNet-50 reference (BatchNorm parameters and biases neither "
                                 "adapted nor decayed)")
    lars_eta: float = option(0.001, "--lars-eta", metavar="ETA", help="lars: trust coefficient")
    lars_epsilon: float = option(0.0, "--lars-epsilon", metavar="EPS", help="lars: added to the trust ratio's denominator")
    momentum: float = option(0.9, "--mom", "--momentum", metavar="M", help="SGD momentum")
    nesterov: bool = option(False, "--nesterov", help="Nesterov momentum")
    wd: float = option(1e-4, "--wd", metavar="WD", help="weight decay")
    bn_wd: bool = option(True, "--bn-wd", help="weight decay on BatchNorm gamma/beta and biases (--no-bn-wd: none)")
    label_smoothing: float = option(0.0, "--label-smoothing", metavar="EPS", help="label smoothing")
    pct_start: float = option(0.3, "--pct-start", metavar="P", help="onecycle: fraction of steps rising")
    div_factor: float = option(25.0, "--div-factor", metavar="D", help="onecycle: initial LR = max LR / D")
    final_div_factor: float = option(1e4, "--final-div-factor", metavar="D",
                                     help="onecycle: final LR = initial LR / D")
    mom_max: float = option(0.95, "--mom-max", metavar="M", help="onecycle: highest momentum")
    mom_min: float = option(0.85, "--mom-min", metavar="M", help="onecycle: lowest momentum")
    phases: Optional[str] = option(None, "--phases", metavar="LIST",
                                   help="imagenet18 phase list (replaces the schedule, epochs, sizes; "
                                        "bs per device, lr as given)")
    print_schedule: bool = option(False, "--print-schedule",
                                  help="print epoch,iteration,lr,momentum,image_size,batch_size per "
                                       "iteration as CSV and exit without training")
    # --- checkpoints and reports
    model_prefix: str = option("model", "--model-prefix", metavar="P",
                               help="checkpoints P-symbol.json, P-EEEE.params, P-EEEE.states, P-EEEE.json")
    save_frequency: int = option(1, "--save-frequency", metavar="K", help="checkpoint every K epochs (0: never)")
    keep_checkpoints: int = option(2, "--keep-checkpoints", metavar="K",
                                   help="keep the last K checkpoints (and the best one)")
    resume: bool = option(True, "--resume",
                          help="continue from the last complete checkpoint under --model-prefix (--no-resume: "
                               "refuse to start over existing ones)")
    load_epoch: Optional[int] = option(None, "--load-epoch", metavar="E", help="val mode: checkpoint epoch to score")
    report: Optional[str] = option(None, "--report", metavar="FILE.json", help="per-epoch JSON report")
    dawn_tsv: Optional[str] = option(None, "--dawn-tsv", metavar="FILE.tsv", help="DAWNBench per-epoch TSV")
    target_top1: Optional[float] = option(None, "--target-top1", metavar="A",
                                          help="stop training once val top-1 reaches A (fraction; MLPerf: 0.759) and "
                                               "report the training time to reach it")
    target_top5: Optional[float] = option(None, "--target-top5", metavar="A",
                                          help="report the training time to reach this val top-5 (fraction)")
    eval_period: int = option(1, "--eval-period", metavar="K",
                              help="train_val: validate every K epochs from --eval-offset on, and after the last")
    eval_offset: int = option(0, "--eval-offset", metavar="O",
                              help="train_val: the first epoch validated, counted from 0 as NVIDIA's MLPerf code "
                                   "counts (with --eval-period 4, offset 2 validates after epochs 3, 7, 11, .. "
                                   "of the epoch lines)")
    # --- MLPerf Training logs (train_val)
    mlperf_log: Optional[str] = option(None, "--mlperf-log", metavar="FILE",
                                       help="write MLPerf's :::MLLOG lines (mlperf-logging's mllog) to FILE, for "
                                            "its compliance checker; needs --target-top1 (a resumed run writes "
                                            "FILE with .resumeN before its suffix)")
    mlperf_org: str = option("visionbench", "--mlperf-org", metavar="NAME", help="MLPerf log: submission_org")
    mlperf_platform: Optional[str] = option(None, "--mlperf-platform", metavar="NAME",
                                            help="MLPerf log: submission_platform (default: NODESxDEVICES and the "
                                                 "device's name)")
    mlperf_division: str = option("closed", "--mlperf-division", choices=("closed", "open"),
                                  help="MLPerf log: submission_division; closed refuses hyperparameters its "
                                       "rules (and the checker) reject")
    mlperf_status: str = option("onprem", "--mlperf-status", choices=("onprem", "cloud", "preview", "research"),
                                help="MLPerf log: submission_status")
    # --- measuring
    iterations: Optional[int] = option(None, "-i", "--iterations", metavar="I",
                                       help="train/inference: at most I steps per epoch; io: measured steps "
                                            "(default: one whole epoch)")
    warmup_iterations: int = option(10, "--warmup-iterations", metavar="W",
                                    help="io mode: steps run before timing starts")
    io_split: str = option("train", "--io-split", choices=("train", "val"), help="io mode: which split to read")
    benchmark: bool = option(False, "--benchmark",
                             help="train mode as a measurement: no checkpoints, no resume; ends with a "
                                  "'benchmark-result:' JSON line (img/s after the warm-up epochs)")
    benchmark_warmup_epochs: int = option(1, "--benchmark-warmup-epochs", metavar="W",
                                          help="--benchmark and inference mode: first W epochs are run "
                                               "but not timed")
    fuse_inference: bool = option(True, "--fuse-inference",
                                  help="inference mode on CPU: fuse the graph for oneDNN (optimize_for "
                                       "backend MKLDNN: convolution + BatchNorm + ReLU + sum in one operator); "
                                       "--no-fuse-inference runs the plainly hybridized graph")

    @property
    def data_prefix(self) -> dict:
        root = Path(self.data_root) if self.data_root else None
        return {split: (root / split if root else None) for split in ("train", "val")}


_HINTS = None


def _field_type(name: str):
    global _HINTS
    if _HINTS is None:
        _HINTS = typing.get_type_hints(Config)
    hint = _HINTS[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return (args[0] if args else hint), type(None) in typing.get_args(hint)


def _check_value(name: str, value, where: str):
    kind, optional = _field_type(name)
    if value is None and optional:
        return None
    ok = (isinstance(value, bool) if kind is bool
          else isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float
          else isinstance(value, kind) and not isinstance(value, bool))
    if not ok:
        raise UsageError(f"{where}: {name} must be {kind.__name__}, got {value!r}")
    choices = Config.__dataclass_fields__[name].metadata["choices"]
    if choices and value not in choices:
        raise UsageError(f"{where}: {name} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return float(value) if kind is float else value


def build_parser(prog: str = "train.py") -> ArgumentParser:
    """Flags for every Config field; defaults are left out so that only what
    the user typed overrides the recipe file."""
    parser = ArgumentParser(prog=prog, argument_default=argparse.SUPPRESS,
                            description="Train, evaluate or measure image classifiers on MXNet/Gluon.")
    parser.add_argument("--config", metavar="FILE", help="JSON recipe file: option names as keys")
    for f in fields(Config):
        meta = f.metadata
        if not meta["flags"]:
            continue   # derived: not the user's to set
        kind, _ = _field_type(f.name)
        default = f.default if f.default is not MISSING else None
        text = f"{meta['help']} (default: {default})"
        if kind is bool:
            parser.add_argument(*meta["flags"], dest=f.name, action=argparse.BooleanOptionalAction, help=text)
        else:
            parser.add_argument(*meta["flags"], dest=f.name, type=kind, choices=meta["choices"],
                                metavar=meta["metavar"], help=text)
    return parser


def load_recipe(path: str) -> dict:
    try:
        recipe = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise UsageError(f"recipe {path} cannot be read ({err.strerror})")
    except json.JSONDecodeError as err:
        raise UsageError(f"recipe {path} is not valid JSON (line {err.lineno}: {err.msg})")
    if not isinstance(recipe, dict):
        raise UsageError(f"recipe {path} must be a JSON object of option names")
    known = {f.name for f in fields(Config) if f.metadata["flags"]}
    for key, value in recipe.items():
        if key not in known:
            raise UsageError(f"recipe {path}: unknown option {key!r}")
        recipe[key] = _check_value(key, value, f"recipe {path}")
    return recipe


def resolve(argv: Optional[Sequence[str]] = None, prog: str = "train.py") -> Config:
    """Defaults, then the recipe file, then the flags; checked."""
    given = vars(build_parser(prog).parse_args(argv))
    recipe_path = given.pop("config", None)
    recipe = load_recipe(recipe_path) if recipe_path else {}
    config = replace(replace(Config(), **recipe), **given)
    check(config)
    if is_mlperf_closed(config) and "seed" not in given and "seed" not in recipe:
        config = replace(config, seed=draw_seed(), seed_drawn=True)
    return config


# A drawn seed travels from rank 0 to the other workers as one float32 value
# (engine/collective.py, broadcast_int), exact for integers below 2**24.
DRAWN_SEED_LIMIT = 2**24


def draw_seed() -> int:
    """A seed from the system's randomness source (os.urandom), as MLPerf's
    closed rules ask ("random numbers": clock or system randomness)."""
    import secrets

    return secrets.randbelow(DRAWN_SEED_LIMIT)


def is_mlperf_closed(config: Config) -> bool:
    """A run whose MLPerf log claims the closed division (without
    --mlperf-log the division is never written anywhere)."""
    return bool(config.mlperf_log) and config.mlperf_division == "closed"


def settle_seed(config: Config, broadcast_int: Callable[[int], int], checkpoint_meta: Optional[dict],
                checkpoint_name: str = "the checkpoint") -> Tuple[Config, Optional[str]]:
    """The seed a training run uses, the same on every worker. A given
    --seed stays as it is. A drawn one becomes, when resuming, the seed the
    checkpoint's run started with (a resumed run continues that run), else
    rank 0's draw (``broadcast_int``: rank 0's value of an integer on every
    worker; each worker of a job resolved its own draw). Returns the config
    and a line for rank 0 to print (None for a given seed). Every worker
    must call this (the broadcast is collective).

    A checkpoint whose meta has no seed (written before the meta kept one)
    is refused rather than continued under a fresh draw: the resumed epochs
    would shuffle by another seed than the one its run logged, and the user
    can give that one (its MLPerf log's 'seed') with --seed."""
    if not config.seed_drawn:
        return config, None
    if checkpoint_meta is not None:
        if checkpoint_meta.get("seed") is None:
            raise UsageError(f"checkpoint {checkpoint_name} does not record the seed its run started with: "
                             "give it with --seed (its MLPerf log's 'seed')")
        seed = int(checkpoint_meta["seed"])
        return replace(config, seed=seed), f"seed {seed}: the seed this run started with (its checkpoint's)"
    seed = broadcast_int(config.seed)
    return replace(config, seed=seed), (f"seed {seed}, drawn from the system's randomness source (MLPerf closed "
                                        "division without --seed; logged as 'seed')")


def check(config: Config) -> None:
    import math

    for f in fields(Config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"{f.name.replace('_', '-')} must be a finite number, got {value}")
    for name in ("num_devices", "batch_size", "image_size", "num_classes", "num_examples"):
        if getattr(config, name) < 1:
            raise UsageError(f"{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    if config.iterations is not None and config.iterations < 1:
        raise UsageError(f"iterations must be at least 1, got {config.iterations}")
    if (config.benchmark or config.mode == "inference") and not 0 <= config.benchmark_warmup_epochs < config.num_epochs:
        raise UsageError(f"benchmark-warmup-epochs must be in 0..{config.num_epochs - 1} (num-epochs "
                         f"{config.num_epochs}), got {config.benchmark_warmup_epochs}: nothing would be timed")
    if config.benchmark and config.mode != "train":
        raise UsageError(f"--benchmark measures training: use it with --mode train, not --mode {config.mode}")
    if config.dtype == "int8" and config.mode not in ("val", "inference"):
        raise UsageError(f"--dtype int8 quantizes a trained float32 model for inference: use it with --mode val "
                         f"or inference, not --mode {config.mode} (train in float32 or float16)")
    if config.dtype == "int8" and config.device == "gpu":   # (--device left to resolve: refused with the same line later)
        refuse_int8_device("gpu")
    if config.dtype == "int8" and config.input_layout != "NCHW":
        raise UsageError("--dtype int8 quantizes the NCHW graph (MXNet 1.9.1's oneDNN INT8 convolutions take "
                         "NCHW): use --input-layout NCHW")
    if config.calib_images < 1:
        raise UsageError(f"calib-images must be at least 1 (INT8 ranges come from the float32 model's outputs "
                         f"on these images), got {config.calib_images}")
    if config.disp_batches < 0:
        raise UsageError(f"disp-batches must be 0 or more, got {config.disp_batches}")
    if config.warmup_iterations < 0:
        raise UsageError(f"warmup-iterations must be 0 or more, got {config.warmup_iterations}")
    if config.dali_threads is not None and config.dali_threads < 1:
        raise UsageError(f"dali-threads must be at least 1, got {config.dali_threads}")
    if config.num_epochs < 1:
        raise UsageError(f"num-epochs must be at least 1, got {config.num_epochs}")
    if config.optimizer == "lars" and config.nesterov:
        raise UsageError("--optimizer lars takes plain momentum (as MLPerf's reference); leave out --nesterov")
    for name in ("lr", "wd", "warmup_epochs", "label_smoothing", "momentum", "end_lr", "lr_power", "lars_eta",
                 "lars_epsilon"):
        if getattr(config, name) < 0:
            raise UsageError(f"{name.replace('_', '-')} must not be negative, got {getattr(config, name)}")
    if config.label_smoothing >= 1:
        raise UsageError(f"label-smoothing must be below 1, got {config.label_smoothing}")
    try:
        steps = lr_steps(config)
    except ValueError:
        raise UsageError(f"--lr-steps must be epochs separated by commas, got {config.lr_steps!r}")
    if any(step < 0 for step in steps):
        raise UsageError(f"--lr-steps must not be negative, got {config.lr_steps!r}")
    if not 0 < config.pct_start < 1:
        raise UsageError(f"pct-start must be in (0, 1), got {config.pct_start}")
    if config.save_frequency < 0 or config.keep_checkpoints < 1:
        raise UsageError("save-frequency must be 0 or more and keep-checkpoints at least 1")
    if not 0 < config.min_random_area <= 1:
        raise UsageError(f"min-random-area must be in (0, 1], got {config.min_random_area}")
    if config.eval_period < 1 or config.eval_offset < 0:
        raise UsageError(f"eval-period must be at least 1 and eval-offset 0 or more, got {config.eval_period} "
                         f"and {config.eval_offset}")
    for name in ("target_top1", "target_top5"):
        target = getattr(config, name)
        if target is not None and not 0 < target <= 1:
            raise UsageError(f"{name.replace('_', '-')} is a fraction of the val images: in (0, 1], got {target}")
    check_engine(config)
    check_mlperf(config)
    check_distributed(config)
    if config.data_root and not Path(config.data_root).is_dir():
        raise UsageError(f"--data-root {config.data_root} is not a folder")


# What the torch engine does not run (yet), each with the reason; everything
# else means the same on both engines.
_TORCH_REFUSALS = (
    (lambda c: c.data_backend == "mxnet", "--data-backend mxnet is MXNet's ImageRecordIter: use dali-cpu, nvjpeg, "
                                          "dali-gpu or synthetic"),
    (lambda c: c.dtype == "int8", "--dtype int8 is MXNet's oneDNN quantization: use --engine mxnet"),
    # dist_sync and dist_device_sync both run (engine/collective.py's TorchGroup: DDP, one device a process).
    (lambda c: c.kv_store == "horovod", "--kv-store horovod is MXNet's Horovod; the torch engine's jobs are "
                                        "--kv-store dist_sync --local-workers W (torch.distributed)"),
    (lambda c: c.num_devices > 1, "-n {n}: the torch engine trains on one device per process (-n 1); for {n} "
                                  "devices start {n} processes: -n 1 --kv-store dist_sync --local-workers {n}"),
    (lambda c: c.num_servers != 1, "--num-servers starts MXNet's parameter servers; the torch engine's workers "
                                   "allreduce among themselves (leave it out)"),
    (lambda c: c.self_test, "--self-test checks MXNet's GPU path: use it with --engine mxnet"),
    (lambda c: c.mode == "inference", "--mode inference measures MXNet graphs: use --engine mxnet"),
)


def check_engine(config: Config) -> None:
    """Flags one engine does not take: exit 2 with the reason."""
    if config.engine == "mxnet":
        if config.dtype == "bfloat16":
            raise UsageError("--dtype bfloat16 runs on --engine torch (MXNet's bfloat16 AMP was slower than "
                             "float32 on CPUs: not offered)")
        if config.compile:
            raise UsageError("--compile is torch.compile: use it with --engine torch")
        if config.data_backend == "nvjpeg":
            raise UsageError("--data-backend nvjpeg decodes and augments with PyTorch: use it with --engine torch "
                             "(dali-gpu or dali-cpu on --engine mxnet)")
        return
    for refused, reason in _TORCH_REFUSALS:
        if refused(config):
            raise UsageError("--engine torch: " + reason.format(kv=config.kv_store, n=config.num_devices))


def check_distributed(config: Config) -> None:
    dist = config.kv_store in DIST_KV_STORES
    if not dist and (config.nnodes, config.node_rank, config.local_workers) != (1, 0, 1):
        jobs = "torch.distributed jobs" if config.engine == "torch" else "parameter-server jobs"
        raise UsageError(f"--nnodes/--node-rank/--local-workers start {jobs}: "
                         "add --kv-store dist_sync (or dist_device_sync)")
    for name in ("nnodes", "num_servers", "local_workers"):
        if getattr(config, name) < 1:
            raise UsageError(f"{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    if not 0 <= config.node_rank < config.nnodes:
        raise UsageError(f"--node-rank must be in 0..{config.nnodes - 1} (--nnodes {config.nnodes}), got {config.node_rank}")
    if config.master_port is not None and not 1 <= config.master_port <= 65535:
        raise UsageError(f"--master-port must be in 1..65535, got {config.master_port}")
    if (dist or config.kv_store == "horovod") and config.mode not in ("train", "train_val"):
        raise UsageError(f"--kv-store {config.kv_store} trains across workers: use --mode train or train_val, "
                         f"not {config.mode}")
    if (dist or config.kv_store == "horovod") and config.data_backend == "mxnet":
        raise UsageError("--data-backend mxnet cannot give every worker the same number of steps per epoch "
                         "(ImageRecordIter's parts differ); use dali-gpu or dali-cpu across workers")
    if config.kv_store == "horovod" and config.num_devices != 1:
        raise UsageError("--kv-store horovod runs one device per process: use -n 1 and start one process "
                         "per GPU with horovodrun")
    if config.sample_log:
        if config.data_backend in ("synthetic", "mxnet"):
            raise UsageError(f"--sample-log records the DALI sampler's choices; --data-backend "
                             f"{config.data_backend} has none")
        if not Path(config.sample_log).is_dir():
            raise UsageError(f"--sample-log {config.sample_log} is not a folder")


def check_mlperf(config: Config) -> None:
    """--mlperf-log: what a log needs, and in the closed division what
    MLPerf's rules fix: the hyperparameters its checker verifies for
    ResNet-50 in ruleset 4.0.0, refused here rather than found by the checker
    after hours of training, and what no checker can see in a log (the
    model, the image size, whole epochs, the evaluation cadence). All the
    problems in one line, so that one correction fixes them."""
    if not config.mlperf_log:
        return
    if config.mode != "train_val":
        raise UsageError(f"--mlperf-log times training to a validation target: use --mode train_val, not {config.mode}")
    if config.target_top1 is None:
        raise UsageError("--mlperf-log needs --target-top1 (MLPerf's ResNet-50 target: 0.759)")
    if config.data_backend == "synthetic":
        raise UsageError("--mlperf-log times training on a real data set, not --data-backend synthetic")
    if config.phases:
        raise UsageError("--mlperf-log records one batch size and schedule; --phases changes them (not MLPerf's recipe)")
    for name in ("report", "dawn_tsv"):
        other = getattr(config, name)
        if other and Path(other).resolve() == Path(config.mlperf_log).resolve():
            raise UsageError(f"--mlperf-log and --{name.replace('_', '-')} name the same file {other}")
    if not Path(config.mlperf_log).parent.is_dir():
        raise UsageError(f"--mlperf-log {config.mlperf_log}: folder {Path(config.mlperf_log).parent} does not exist")
    for name in ("mlperf_org", "mlperf_platform"):
        if getattr(config, name) == "":
            raise UsageError(f"{name.replace('_', '-')} must not be empty")
    if config.mlperf_division != "closed":
        return
    problems = _closed_hyperparameter_problems(config) + _closed_recipe_problems(config)
    if problems:
        raise UsageError(f"--mlperf-division closed needs {'; '.join(problems)}: MLPerf's closed rules fix these; "
                         "use --mlperf-division open for other values")


def _closed_recipe_problems(config: Config) -> list:
    """What MLPerf's closed ResNet-50 fixes and its checker cannot see in a
    log: the model, the image size, whole epochs, the evaluation cadence
    (the rules: "every 4 epochs with offset 0 or 1 or 2 or 3"; --eval-offset
    counts epochs from 0), and the reference's LARS trust coefficient."""
    problems = []
    if (config.arch, config.num_layers) != ("resnetv15", 50):
        problems.append(f"ResNet50 v1.5, --arch resnetv15 --num-layers 50 (got {model_name(config)})")
    if config.image_size != 224:
        problems.append(f"--image-size 224 (got {config.image_size})")
    if config.iterations is not None:
        # Each epoch is the whole training set: train_samples in the log says so.
        problems.append(f"whole epochs, no -i/--iterations (got {config.iterations})")
    if (config.eval_period, config.eval_offset) not in {(4, offset) for offset in range(4)}:
        problems.append(f"--eval-period 4 with --eval-offset 0, 1, 2 or 3 (got period {config.eval_period}, "
                        f"offset {config.eval_offset})")
    if config.lars_eta != 0.001:
        problems.append(f"--lars-eta 0.001 (got {config.lars_eta})")
    return problems


def _closed_hyperparameter_problems(config: Config) -> list:
    """The hyperparameter constraints of MLPerf's ResNet-50 rules (ruleset
    4.0.0), most of which its checker also verifies in the log."""
    import math

    problems = []
    if config.lr_schedule != "poly":
        problems.append(f"--lr-schedule poly (got {config.lr_schedule})")
    if config.end_lr != 1e-4:
        problems.append(f"--end-lr 0.0001 (got {config.end_lr})")
    if config.lr_power != 2:
        problems.append(f"--lr-power 2 (got {config.lr_power})")
    if config.optimizer == "lars" and config.lars_epsilon != 0:
        problems.append(f"--lars-epsilon 0 (got {config.lars_epsilon})")
    if config.wd <= 0 or not _whole(math.log2(config.wd / 1e-4)):
        problems.append(f"--wd 0.0001 x 2^k (got {config.wd})")
    if config.label_smoothing not in (0.0, 0.1):
        problems.append(f"--label-smoothing 0 or 0.1 (got {config.label_smoothing})")
    if config.optimizer == "sgd" and config.kv_store != "horovod":   # (horovodrun's process count is not known here)
        base_lr = config.lr * global_batch_size(config) / 256
        if not _whole(base_lr / 0.001):
            problems.append(f"a base LR that is a multiple of 0.001 (--lr x global batch / 256 = {base_lr:.6g})")
    # The rules: SGD warms up over "integer >= 0" epochs; LARS over an "arbitrary constant".
    if config.optimizer == "sgd" and config.warmup_epochs != int(config.warmup_epochs):
        problems.append(f"whole --warmup-epochs with --optimizer sgd (got {config.warmup_epochs})")
    # (LARS above a global batch of 32k may choose its momentum.)
    if (config.optimizer == "sgd" or global_batch_size(config) < 32768) and config.momentum != 0.9:
        problems.append(f"--momentum 0.9 (got {config.momentum})")
    return problems


def _whole(value: float) -> bool:
    """The checker's own tolerance for 'an integer'."""
    return abs(round(value) - value) < 1e-5


def global_batch_size(config: Config) -> int:
    """Images per step over every device of every worker of the job."""
    return config.batch_size * config.num_devices * config.local_workers * config.nnodes


def check_data_root(config: Config) -> None:
    """Checked after the devices are resolved, so that a missing GPU is the
    first thing a CPU-only machine hears about."""
    if config.data_backend != "synthetic" and not config.data_root:
        raise UsageError(f"--data-backend {config.data_backend or 'dali'} reads --data-root DIR; "
                         "give one, or use --data-backend synthetic")


def refuse_int8_device(device: str) -> None:
    """Checked here when --device is given, and by resolve_precision once it is resolved."""
    if device != "cpu":
        raise UsageError("--dtype int8 runs on CPUs (MXNet's INT8 operators are oneDNN ones): add --device cpu, "
                         "or use --dtype float16 on GPUs")


def input_dtype(config: Config) -> str:
    """The dtype of the batches the pipeline emits: float16 for float16
    models of the MXNet engine; float32 otherwise (an INT8 model quantizes
    its float32 input itself; torch's autocast casts inside the model)."""
    return "float16" if config.dtype == "float16" and config.engine == "mxnet" else "float32"


def lr_steps(config: Config) -> tuple:
    return tuple(int(part) for part in config.lr_steps.split(",") if part.strip())


def model_name(config: Config) -> str:
    if config.arch == "resnet9":
        return "resnet9"
    return f"resnet{config.num_layers}_v1{'.5' if config.arch == 'resnetv15' else ''}"


def to_dict(config: Config) -> dict:
    return asdict(config)
