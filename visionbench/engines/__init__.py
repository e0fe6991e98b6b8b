"""The frameworks a run can train on (``--engine``): ``mxnet`` (Gluon; the
reference) and ``torch`` (PyTorch). Each lives in its own sub-package, and
nothing outside ``engines/X`` imports framework X at module level, so the
torch engine runs where ``import mxnet`` fails and the other way round."""
