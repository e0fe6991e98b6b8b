"""The MXNet engine (``--engine mxnet``, the default): Gluon models, the
Trainer and its kvstore, float16 with loss scaling, LARS on fused
operators, checkpoints in MXNet's formats, INT8 inference. Its modules live
in visionbench/engine/ (trainer, precision, lars, checkpoint's MXNet files,
quantize, gpus); this package is the session the run loop talks to."""
