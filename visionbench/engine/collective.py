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

``start_sum`` begins a sum without waiting for it (``.result()`` waits): the
stop vote every step casts (epoch.StopAgreement) is read steps later, so
it never holds the host back.
"""
from __future__ import annotations

from typing import List, Sequence

from ..cli import UsageError

DIST_KVSTORES = ("dist_sync", "dist_device_sync")
METRIC_KEY = 1_000_000        # kvstore keys of metrics: far above the Trainer's parameter indices
BROADCAST_KEY = 1_000_100
VOTE_KEY = 1_000_050          # + 10 x slot + length: start_sum's keys
VOTE_SLOTS = 4                # start_sum's keys in rotation (epoch.StopAgreement reads 2 behind: no wait)


class Done:
    """A sum already known (one worker, or a group that sums synchronously)."""

    def __init__(self, values: Sequence[float]):
        self._values = [float(v) for v in values]

    def result(self) -> List[float]:
        return self._values


class Single:
    rank = 0
    size = 1
    kvstore = None     # build_trainer picks the single-machine kvstore from the config

    def sum(self, values: Sequence[float]) -> List[float]:
        return [float(v) for v in values]

    def start_sum(self, values: Sequence[float]) -> Done:
        return Done(values)

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
        self._sums_started = 0
        self._slots = {}   # start_sum's slot -> its latest pending sum

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

    def start_sum(self, values: Sequence[float]) -> "_PendingArray":
        """The pushpull is queued on MXNet's engine; reading the result waits
        for it. A pull answers with the key's latest sum, so a key's next
        push must wait until every worker has pulled: the sums rotate over
        VOTE_SLOTS keys, and a key is reused only after this worker's pull
        of its previous sum is read (a push's round completes only when every
        worker has pushed, hence after their pulls of the round before).
        Seen without: a sum read one round late, the workers disagreeing."""
        import mxnet as mx

        slot = self._sums_started % VOTE_SLOTS
        self._sums_started += 1
        previous = self._slots.get(slot)
        if previous is not None:
            previous.result()
        out = mx.nd.zeros(len(values))
        key = self._key(VOTE_KEY + 10 * slot, len(values))
        self.kvstore.pushpull(key, mx.nd.array([float(v) for v in values]), out=out)
        self._slots[slot] = _PendingArray(out)
        return self._slots[slot]

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


class _PendingArray:
    def __init__(self, out):
        self._out = out
        self._values = None

    def result(self) -> List[float]:
        if self._values is None:
            self._values = [float(v) for v in self._out.asnumpy()]
        return self._values


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

    def start_sum(self, values: Sequence[float]) -> Done:
        return Done(self.sum(values))

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
        # start_sum's host-side group: gloo on host tensors, so that reading a result never waits for the
        # GPU's queued steps (an NCCL result would be read through the training stream).
        self._host_group = dist.new_group(backend="gloo") if device == "gpu" else None   # GPU-ONLY (new_group)

    def sum(self, values: Sequence[float]) -> List[float]:
        import torch
        import torch.distributed as dist

        total = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._device)
        dist.all_reduce(total)   # SUM
        return [float(v) for v in total.tolist()]

    def start_sum(self, values: Sequence[float]) -> "_PendingTorch":
        import torch
        import torch.distributed as dist

        total = torch.tensor([float(v) for v in values], dtype=torch.float64)   # on the host, gloo
        return _PendingTorch(total, dist.all_reduce(total, group=self._host_group, async_op=True))

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


class _PendingTorch:
    def __init__(self, total, work):
        self._total, self._work = total, work

    def result(self) -> List[float]:
        self._work.wait()
        return [float(v) for v in self._total.tolist()]


def make_group(kv_store: str, engine: str = "mxnet", device: str = "cpu"):
    """The group of this process, from --kv-store (and the variables the
    launcher set: DMLC_* for the parameter server, MASTER_*/RANK/WORLD_SIZE
    for torch.distributed)."""
    if kv_store in DIST_KVSTORES:
        return TorchGroup(device) if engine == "torch" else KVStoreGroup(kv_store)
    if kv_store == "horovod":
        return HorovodGroup()
    return Single()
