"""The PyTorch engine (``--engine torch``): models weight-compatible with the
Gluon ones, autocast + GradScaler, DDP, checkpoints with the same promises.
Only modules under this package import torch at module level."""
