"""Who this process is among the workers of a job, and the few collective
operations the training loop needs: sums of metrics, rank 0's value of an
integer, a barrier.

- ``Single``: one worker (the devices of one machine); nothing to exchange.
- ``KVStoreGroup``: MXNet's parameter server (``dist_sync`` /
  ``dist_device_sync``). Metrics travel through the same kvstore as the
  gradients, under keys far above the parameters' indices.
- ``HorovodGroup``: Horovod's allreduce (optional; imported only when asked
  for). Not exercised here: Horovod is not installed on the test machines.
- ``TorchGroup``: the torch engine's workers (``--engine torch --kv-store
  dist_sync|dist_device_sync``, started by engine/launch.py): torch.distributed
  with gloo on CPUs and NCCL on GPUs. For the torch engine both kv-store names
  mean synchronous data parallel, one device a process: DDP allreduces the
  gradients where they are (on the GPUs under NCCL), so there is no separate
  aggregation on the host to choose.
"""
from __future__ import annotations

from typing import List, Sequence

from ..cli import UsageError

DIST_KVSTORES = ("dist_sync", "dist_device_sync")
METRIC_KEY = 1_000_000        # kvstore keys of metrics: far above the Trainer's parameter indices
BROADCAST_KEY = 1_000_100


class Single:
    rank = 0
    size = 1
    kvstore = None     # build_trainer picks the single-machine kvstore from the config

    def sum(self, values: Sequence[float]) -> List[float]:
        return [float(v) for v in values]

    def broadcast_int(self, value: int) -> int:
        return int(value)

    def barrier(self) -> None:
        pass

    def prepare_trainer(self, trainer, params) -> None:
        pass

    def close(self) -> None:
        pass


class KVStoreGroup:
    """A worker of a ps-lite job (started by ``./runner --kv-store dist_sync``)."""

    def __init__(self, kind: str):
        import mxnet as mx

        self.kvstore = mx.kv.create(kind)
        self.rank = self.kvstore.rank
        self.size = self.kvstore.num_workers
        self._shapes = {}
        self._broadcasts = 0

    def _key(self, base: int, length: int) -> int:
        """One key per vector length: a key's shape is fixed at its init."""
        import mxnet as mx

        key = base + length
        if key not in self._shapes:
            self.kvstore.init(key, mx.nd.zeros(length))
            self._shapes[key] = length
        return key

    def sum(self, values: Sequence[float]) -> List[float]:
        import mxnet as mx

        local = mx.nd.array([float(v) for v in values], dtype="float64").astype("float32")
        out = mx.nd.zeros(len(values))
        # dist_sync: the server adds every worker's push before answering the pull.
        self.kvstore.pushpull(self._key(METRIC_KEY, len(values)), local, out=out)
        return [float(v) for v in out.asnumpy()]

    def broadcast_int(self, value: int) -> int:
        """Rank 0's ``value`` on every worker: a fresh key's init keeps rank 0's
        data only (ps-lite), and init ends with a barrier."""
        import mxnet as mx

        key = BROADCAST_KEY + self._broadcasts
        self._broadcasts += 1
        self.kvstore.init(key, mx.nd.array([float(value)]))
        out = mx.nd.zeros(1)
        self.kvstore.pull(key, out=out)
        return int(round(float(out.asscalar())))

    def barrier(self) -> None:
        import mxnet as mx

        mx.nd.waitall()
        self.kvstore._barrier()

    def prepare_trainer(self, trainer, params) -> None:
        """Finish the Trainer's kvstore set-up on every worker before any
        gradient is pushed. With update_on_kvstore=False a parameter and its
        gradient share one key: Gluon initialises the key with rank 0's
        weights and every worker pulls them, lazily, at its first
        allreduce. A fast worker can push gradients to that key before a slow
        one has pulled, and the slow one then starts from the gradient sum
        instead of the weights (seen with MXNet 1.9.1 over loopback). Doing
        the init and pull here, then a barrier, closes that race."""
        if not trainer._kv_initialized:
            trainer._init_kvstore()
        if trainer._params_to_init:
            trainer._init_params()
        self.barrier()

    def close(self) -> None:
        pass   # ps-lite leaves the job when the process exits


class HorovodGroup:
    """One Horovod process (started by horovodrun / mpirun, one device each)."""

    def __init__(self):
        try:
            import horovod.mxnet as hvd
        except ImportError:
            raise UsageError("--kv-store horovod: Horovod is not installed (pip install horovod with "
                             "HOROVOD_WITH_MXNET=1); or use --kv-store dist_sync")
        hvd.init()
        self._hvd = hvd
        self.rank = hvd.rank()
        self.size = hvd.size()
        self.local_rank = hvd.local_rank()
        self.kvstore = None

    def sum(self, values: Sequence[float]) -> List[float]:
        import mxnet as mx

        total = self._hvd.allreduce(mx.nd.array([float(v) for v in values]), average=False, name="metrics")
        return [float(v) for v in total.asnumpy()]

    def broadcast_int(self, value: int) -> int:
        import mxnet as mx

        out = self._hvd.broadcast(mx.nd.array([float(value)]), root_rank=0, name="broadcast_int")
        return int(round(float(out.asscalar())))

    def barrier(self) -> None:
        self.sum([0.0])

    def prepare_trainer(self, trainer, params) -> None:
        self._hvd.broadcast_parameters(params, root_rank=0)

    def close(self) -> None:
        pass


class TorchGroup:
    """One worker of a torch engine job: torch.distributed's default process
    group, joined from the MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE variables
    engine/launch.py sets. The metrics travel as float64 (exact counts of
    images, as the MXNet engine's float32 sums are not beyond 2^24).

    On GPUs each worker sees only its own GPU (CUDA_VISIBLE_DEVICES, set by
    the launcher), so its device is cuda:0; the group deliberately has no
    ``local_rank`` (main.first_gpu_index would take it as a GPU index)."""

    kvstore = None

    def __init__(self, device: str):
        import torch
        import torch.distributed as dist

        if device == "gpu":
            torch.cuda.set_device(0)   # GPU-ONLY: NCCL's communicator binds to the current device
            self._device = torch.device("cuda", 0)
        else:
            self._device = torch.device("cpu")
        dist.init_process_group("nccl" if device == "gpu" else "gloo", init_method="env://")
        self.rank = dist.get_rank()
        self.size = dist.get_world_size()

    def sum(self, values: Sequence[float]) -> List[float]:
        import torch
        import torch.distributed as dist

        total = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._device)
        dist.all_reduce(total)   # SUM
        return [float(v) for v in total.tolist()]

    def broadcast_int(self, value: int) -> int:
        import torch
        import torch.distributed as dist

        out = torch.tensor([int(value)], dtype=torch.int64, device=self._device)
        dist.broadcast(out, src=0)
        return int(out.item())

    def barrier(self) -> None:
        # An allreduce rather than dist.barrier(), which under NCCL guesses the device of each rank.
        self.sum([0.0])

    def prepare_trainer(self, trainer, params) -> None:
        """Nothing: DDP broadcasts rank 0's weights in its constructor (engines/torch/session.py)."""

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def make_group(kv_store: str, engine: str = "mxnet", device: str = "cpu"):
    """The group of this process, from --kv-store (and the variables the
    launcher set: DMLC_* for the parameter server, MASTER_*/RANK/WORLD_SIZE
    for torch.distributed)."""
    if kv_store in DIST_KVSTORES:
        return TorchGroup(device) if engine == "torch" else KVStoreGroup(kv_store)
    if kv_store == "horovod":
        return HorovodGroup()
    return Single()
