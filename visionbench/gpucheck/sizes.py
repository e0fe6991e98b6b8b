"""How big each part of the check is: the GPU sizes (ResNet50 v1.5 at
224 px, the batches issue 23 names) and the toy sizes of ``--tiny``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple


@dataclass(frozen=True)
class CheckSizes:
    num_layers: int               # ResNet depth of every ResNet part (v1.5)
    image_size: int               # pixels, square network input
    num_classes: int
    train_batches: Tuple[int, int]   # the synthetic matrix's batches; the larger one is the real-data batch
    train_steps: int              # timed steps per point, after an untimed epoch of as many
    readiness_steps: int          # training steps of each readiness check
    readiness_batch: int
    compiled_points: str          # "all", or "one": only bfloat16 channels_last at the larger batch
    inference_batches: Tuple[int, ...]
    inference_steps: int          # timed forward passes per batch size, after as many untimed
    jpeg_images: int              # generated ImageNet-like JPEGs of the real-data part
    jpeg_side: int                # their shorter side, pixels (the longer one up to 4:3)
    label_images: int             # generated images of the label check
    resnet9_images: int           # CIFAR-shaped synthetic images per ResNet9 epoch
    resnet9_batch: int
    cpu_decode_threads: int       # decoding threads of the CPU-decoding comparison

    def scaled(self) -> str:
        """One line for the table's header."""
        return (f"ResNet{self.num_layers} v1.5 at {self.image_size} px, {self.num_classes} classes, "
                f"{self.train_steps} timed steps per training point")


# issue 23's sizes. 30 timed steps of batch 256 on an H200 (about 5,000 img/s
# hoped for) take about 1.5 s: long against the step, short against the 8 minutes.
# One compiled point: every point is a fresh model after torch._dynamo.reset(),
# and each (batch, dtype, layout) is another graph, so each compiled point is a
# cold inductor compile of ResNet50's forward and backward (about a minute or
# more on 16 cores; not measured here). Eight of them do not fit the 8 minutes;
# the seven left out are "skipped:" records naming why.
GPU = CheckSizes(num_layers=50, image_size=224, num_classes=1000, train_batches=(128, 256), train_steps=30,
                 readiness_steps=8, readiness_batch=64, compiled_points="one", inference_batches=(1, 64, 256),
                 inference_steps=50, jpeg_images=256 * 12, jpeg_side=375, label_images=256,
                 resnet9_images=50000, resnet9_batch=512, cpu_decode_threads=16)

# --device cpu --tiny: the same code paths at toy sizes, well under a minute
# on 2 cores. ResNet18 (basic blocks) at 16 px: ResNet50 costs 2-3x per step.
TINY = CheckSizes(num_layers=18, image_size=16, num_classes=10, train_batches=(2, 4), train_steps=1,
                  readiness_steps=3, readiness_batch=4, compiled_points="one", inference_batches=(1, 2, 4),
                  inference_steps=3, jpeg_images=8, jpeg_side=40, label_images=12,
                  resnet9_images=16, resnet9_batch=8, cpu_decode_threads=2)
