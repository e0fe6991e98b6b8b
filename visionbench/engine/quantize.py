"""``--dtype int8``: the float32 model quantized for CPUs by MXNet's own
quantization (``mxnet.contrib.quantization.quantize_net_v2``).

On a CPU context MXNet first fuses the graph for oneDNN (convolution +
BatchNorm + ReLU + residual sum, the ``MKLDNN_QUANTIZE`` pass), then
replaces each fused operator by its INT8 form. The range of every quantized
tensor comes from calibration: the float32 model runs on ``--calib-images``
images and each layer's output range is taken as the min/max seen
(``naive``) or as the threshold that keeps the quantized distribution
closest to the float32 one in KL divergence (``entropy``, slower, needs
scipy). ``quantized_dtype="auto"`` lets MXNet pick uint8 after ReLUs and
int8 elsewhere.

A model calibrated from a checkpoint is kept beside it, under names no
checkpoint of this suite or of NVIDIA's example uses:

    PREFIX-EEEE.int8-MODE-N-KEY.symbol.json   the quantized graph
    PREFIX-EEEE.int8-MODE-N-KEY.params        its INT8 weights and ranges
    PREFIX-EEEE.int8-MODE-N-KEY.json          what it was calibrated from
                                              (written last: marks it complete)

KEY is a digest of every setting the calibration depends on (checkpoint
contents, mode, images, image size, data set, MXNet version), so a later run
with the same settings loads the model instead of calibrating again, and a
run with other settings never picks up a stale one.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional

from ..cli import RunFailure, UsageError, last_error_line
from ..files import fsync_dir, partial_path, write_text_atomic

CALIB_MODES = ("naive", "entropy")


@dataclass(frozen=True)
class Calibration:
    """How an INT8 model got its ranges; goes into results and reports."""
    mode: str                # naive | entropy
    images: int              # images the float32 model ran on to collect ranges
    source: str              # where they came from: "val" / "train" (the .rec set) or "synthetic"
    seconds: float           # spent calibrating (0 when reused)
    reused: Optional[str]    # the saved model that was loaded instead, or None

    def describe(self) -> str:
        how = f"{self.mode} calibration on {self.images} {self.source} images"
        return f"{how}, reused from {self.reused}" if self.reused else f"{how} ({self.seconds:.1f} s)"

    def to_dict(self) -> dict:
        return asdict(self)


def calibration_images(loader, count: int):
    """The first ``count`` images the loader yields in its first epoch
    (padding left out), on the CPU, as one float32 NDArray."""
    import mxnet as mx

    batches: List = []
    held = 0
    for step in loader.epoch(0):
        for data, _, pad in step:
            valid = data.shape[0] - int(pad)
            if valid > 0:
                batches.append(data[:valid].as_in_context(mx.cpu()).astype("float32"))
                held += valid
            if held >= count:
                break
        if held >= count:
            break
    if not batches:
        raise UsageError("--dtype int8: the loader gave no image to calibrate on")
    return mx.nd.concat(*batches, dim=0)[:count] if held > count else mx.nd.concat(*batches, dim=0)


def quantize(float_net, images, mode: str, batch_size: int, devices, quantize_mode: str = "full",
             exclude_layers: Optional[List[str]] = None):
    """The INT8 SymbolBlock of ``float_net`` (a float32 HybridBlock),
    calibrated on ``images`` (N x C x H x W float32, on the CPU), with its
    parameters on every CPU context of ``devices``. ``quantize_mode`` and
    ``exclude_layers`` (symbol names kept in float32) are MXNet's; the suite
    runs "full" with nothing excluded (bench/int8_variants.py measures the others)."""
    import mxnet as mx
    from mxnet.contrib.quantization import quantize_net_v2

    count = images.shape[0]
    # Each batch the calibration runs is one forward pass of the float32 graph; a
    # last, shorter batch is padded with the first images (duplicates do not move
    # a min/max and barely move a histogram), and exactly `count` images are counted.
    calib_batch = min(batch_size, count)
    data = mx.io.NDArrayIter(images, batch_size=calib_batch, last_batch_handle="pad", data_name="data")
    # MXNet logs "Subgraph backend MKLDNN is activated." on each pass it applies unless told not to
    os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")
    try:
        with warnings.catch_warnings():
            # quantize_net_v2 warns about its own parameter inference on every call
            warnings.simplefilter("ignore")
            net = quantize_net_v2(float_net, quantized_dtype="auto", quantize_mode=quantize_mode,
                                  quantize_granularity="tensor-wise", exclude_layers=exclude_layers,
                                  calib_mode=mode, calib_data=data,
                                  num_calib_examples=count, ctx=mx.cpu())
    except Exception as err:  # noqa: BLE001 - MXNetError, ValueError, ImportError (entropy without scipy)
        raise RunFailure(f"INT8 calibration ({mode}, {count} images) failed: {last_error_line(err)}")
    return _ready(net, devices)


def _ready(net, devices):
    net.collect_params().reset_ctx(list(devices))
    net.hybridize(static_alloc=True, static_shape=True)
    return net


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def saved_names(params: Path, settings: dict) -> dict:
    """Where the model calibrated from checkpoint ``params`` (PREFIX-EEEE.params) with ``settings`` is kept."""
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    base = str(params.with_suffix("")) + f".int8-{settings['calib_mode']}-{settings['calib_images']}-{key}"
    return {"symbol": Path(base + ".symbol.json"), "params": Path(base + ".params"), "meta": Path(base + ".json")}


def _file_stamp(path: Path) -> Optional[list]:
    """Size and modification time (ns) of a data file: a set rewritten in place is another set."""
    try:
        info = path.stat()
    except OSError:
        return None
    return [info.st_size, info.st_mtime_ns]


def calibration_settings(checkpoint_params: Path, config, loader, source: str) -> dict:
    """Everything a calibrated model depends on (the key of its saved copy):
    the weights, how the calibration images are chosen and preprocessed
    (set, backend, augmentation, image size, batch, device count, seed) and
    how the model is quantized."""
    import mxnet as mx

    from ..config import model_name

    prefix = loader.spec.prefix
    data = None
    if prefix is not None and source != "synthetic":
        data = {"path": str(Path(prefix).resolve()),
                "rec": _file_stamp(Path(f"{prefix}.rec")), "idx": _file_stamp(Path(f"{prefix}.idx"))}
    return {"checkpoint": checkpoint_params.name, "checkpoint_sha256": _sha256(checkpoint_params),
            "calib_mode": config.calib_mode, "calib_images": config.calib_images, "source": source, "data": data,
            "data_backend": config.data_backend, "augment": config.augment, "image_size": config.image_size,
            "batch_size": config.batch_size, "devices": len(loader.spec.devices), "seed": config.seed,
            "model": model_name(config), "quantized_dtype": "auto", "quantize_mode": "full", "mxnet": mx.__version__}


def load_saved(names: dict, settings: dict, devices):
    """(the saved INT8 model for ``settings``, how it was calibrated), or None when there is no complete one."""
    import mxnet as mx

    try:
        meta = json.loads(names["meta"].read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(meta, dict) or meta.get("settings") != settings or not isinstance(meta.get("calibration"), dict):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # "Cannot decide type for ... data": it is float32, set at the first call
            net = mx.gluon.SymbolBlock.imports(str(names["symbol"]), ["data"], str(names["params"]), ctx=mx.cpu())
    except Exception:  # noqa: BLE001 - a damaged copy: calibrate again (and replace it)
        return None
    return _ready(net, devices), meta["calibration"]


def save(net, names: dict, settings: dict, calibration: Calibration) -> Optional[str]:
    """Keep the calibrated model under ``names``; returns why it could not be
    kept (a read-only folder, a full disk), or None. The meta file is written
    last, so an interrupted save is never loaded."""
    tmp_prefix = partial_path(names["params"].with_suffix(""))
    written = [Path(f"{tmp_prefix}-symbol.json"), Path(f"{tmp_prefix}-0000.params")]
    complete = False
    try:
        net.export(str(tmp_prefix), epoch=0)
        os.replace(written[0], names["symbol"])
        os.replace(written[1], names["params"])
        write_text_atomic(names["meta"], json.dumps({"settings": settings, "calibration": calibration.to_dict()},
                                                    indent=1, sort_keys=True) + "\n")
        complete = True
        fsync_dir(names["meta"].parent)
    except Exception as err:  # noqa: BLE001 - OSError, or MXNetError for what MXNet writes itself
        return last_error_line(err)
    finally:   # a signal too: nothing half-saved stays (kill -9 leftovers: checkpoint.remove_leftovers)
        for path in written:
            path.unlink(missing_ok=True)
        if not complete:
            names["symbol"].unlink(missing_ok=True)
            names["params"].unlink(missing_ok=True)
    return None


def int8_net(float_net, loader, config, devices, checkpoint_params: Optional[Path] = None, say=print):
    """The INT8 model of ``float_net`` and its Calibration. With
    ``checkpoint_params`` (the checkpoint the float32 weights came from), a
    complete saved model with the same settings is loaded instead of
    calibrating, and a newly calibrated one is saved beside the checkpoint."""
    source = "synthetic" if config.data_backend == "synthetic" else ("train" if loader.spec.train else "val")
    settings = names = None
    if checkpoint_params is not None:
        settings = calibration_settings(checkpoint_params, config, loader, source)
        names = saved_names(checkpoint_params, settings)
        saved = load_saved(names, settings, devices)
        if saved is not None:
            net, how = saved
            return net, Calibration(how["mode"], how["images"], how["source"], 0.0, names["params"].name)
    started = time.perf_counter()
    images = calibration_images(loader, config.calib_images)
    if images.shape[0] < config.calib_images:
        say(f"--calib-images {config.calib_images}: the {source} set holds {images.shape[0]}; "
            f"calibrating on those", flush=True)
    net = quantize(float_net, images, config.calib_mode, config.batch_size, devices)
    try:
        # the INT8 graph's first forward creates its oneDNN primitives (errors surface here); export()
        # also needs one, to save the graph it built
        net(images[:min(config.batch_size, images.shape[0])].as_in_context(devices[0])).wait_to_read()
    except Exception as err:  # noqa: BLE001 - MXNetError from oneDNN
        raise RunFailure(f"INT8 model ({config.calib_mode} calibration) cannot run: {last_error_line(err)}")
    calibration = Calibration(config.calib_mode, int(images.shape[0]), source, time.perf_counter() - started, None)
    if names is not None:
        why = save(net, names, settings, calibration)
        if why:
            say(f"warning: the calibrated model could not be kept beside {checkpoint_params} ({why}); "
                "the next run calibrates again", flush=True)
    return net, calibration
