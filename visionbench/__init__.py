"""visionbench: MXNet/Gluon training and benchmark suite fed by DALI from RecordIO."""

__version__ = "0.1.0"
