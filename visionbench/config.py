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
from typing import Optional, Sequence

from .cli import ArgumentParser, UsageError

MODES = ("train", "val", "train_val", "io")
DEVICES = ("gpu", "cpu")


def option(default, *flags: str, help: str, choices: Optional[Sequence] = None, metavar: str = None):
    """A config field: ``flags`` are its command-line spellings (the first
    long one is canonical), ``help`` ends with its unit where it has one."""
    return field(default=default, metadata={"flags": flags, "help": help, "choices": choices, "metavar": metavar})


@dataclass(frozen=True)
class Config:
    # --- what to run
    mode: str = option("train_val", "--mode", choices=MODES,
                       help="train_val, train, val, or io (only the input pipeline, to measure it)")
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
                                         choices=("dali-gpu", "dali-cpu", "mxnet", "synthetic"),
                                         help="input pipeline; synthetic: random tensors, no I/O "
                                              "(None: dali-gpu on GPUs, dali-cpu on CPUs)")
    batch_size: int = option(192, "-b", "--batch-size", metavar="B", help="images per device per step")
    image_size: int = option(224, "--image-size", metavar="S", help="network input side, pixels")
    dtype: str = option("float32", "--dtype", choices=("float32", "float16"), help="training precision")
    input_layout: str = option("NCHW", "--input-layout", choices=("NCHW", "NHWC"),
                               help="layout of the batches the pipeline emits")
    augment: str = option("imagenet", "--augment", choices=("imagenet", "cifar"),
                          help="augmentation recipe")
    min_random_area: float = option(0.08, "--min-random-area", metavar="F",
                                    help="smallest random crop, fraction of the image area (imagenet)")
    rect_val: bool = option(False, "--rect-val", help="rectangular validation batches (imagenet18)")
    dali_threads: Optional[int] = option(None, "--dali-threads", metavar="T",
                                         help="decoding threads per device pipeline (default: cores / devices)")
    num_classes: int = option(1000, "--num-classes", metavar="C", help="classes (labels of synthetic data)")
    num_examples: int = option(1281167, "--num-examples", metavar="N",
                               help="images per epoch of synthetic data")
    seed: int = option(0, "--seed", help="seed of sampling, augmentation and initialisation")
    # --- measuring
    iterations: Optional[int] = option(None, "-i", "--iterations", metavar="I",
                                       help="steps to run (io mode: measured steps; default one epoch)")
    warmup_iterations: int = option(10, "--warmup-iterations", metavar="W",
                                    help="io mode: steps run before timing starts")
    io_split: str = option("train", "--io-split", choices=("train", "val"), help="io mode: which split to read")

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
    known = {f.name for f in fields(Config)}
    for key, value in recipe.items():
        if key not in known:
            raise UsageError(f"recipe {path}: unknown option {key!r}")
        recipe[key] = _check_value(key, value, f"recipe {path}")
    return recipe


def resolve(argv: Optional[Sequence[str]] = None, prog: str = "train.py") -> Config:
    """Defaults, then the recipe file, then the flags; checked."""
    given = vars(build_parser(prog).parse_args(argv))
    recipe_path = given.pop("config", None)
    config = Config()
    if recipe_path:
        config = replace(config, **load_recipe(recipe_path))
    config = replace(config, **given)
    check(config)
    return config


def check(config: Config) -> None:
    for name in ("num_devices", "batch_size", "image_size", "num_classes", "num_examples"):
        if getattr(config, name) < 1:
            raise UsageError(f"{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    if config.iterations is not None and config.iterations < 1:
        raise UsageError(f"iterations must be at least 1, got {config.iterations}")
    if config.warmup_iterations < 0:
        raise UsageError(f"warmup-iterations must be 0 or more, got {config.warmup_iterations}")
    if config.dali_threads is not None and config.dali_threads < 1:
        raise UsageError(f"dali-threads must be at least 1, got {config.dali_threads}")
    if not 0 < config.min_random_area <= 1:
        raise UsageError(f"min-random-area must be in (0, 1], got {config.min_random_area}")
    if config.data_backend != "synthetic" and not config.data_root:
        raise UsageError(f"--data-backend {config.data_backend or 'dali'} reads --data-root DIR; "
                         "give one, or use --data-backend synthetic")
    if config.data_root and not Path(config.data_root).is_dir():
        raise UsageError(f"--data-root {config.data_root} is not a folder")


def to_dict(config: Config) -> dict:
    return asdict(config)
