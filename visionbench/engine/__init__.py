"""Devices, precision, the train/val loop, checkpoints, metrics."""
