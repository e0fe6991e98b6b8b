"""What a run checks about the machine before it starts: host memory of CPU
training (estimate against a measured peak, refusal of a run that cannot
fit), and the GPU environment settings (pointwise fusion on Ada with an old
NVRTC), whose rules are pure and tested here on CPU."""
import math
import re
import resource
import subprocess
from dataclasses import replace


from conftest import ROOT, one_line_error, runner_env
from visionbench.config import Config
from visionbench.engine import memory
from visionbench.engine.gpu_settings import apply_environment, mxnet_environment
from visionbench.engine.gpus import Gpu, fusion_blocking_gpus

MIB = 2 ** 20

# VmHWM, the peak resident memory of this process's own address space: getrusage's ru_maxrss
# would also count the resident memory of the process that forked it (Linux carries it across
# exec), which is pytest's own, gigabytes by the end of the suite.
PEAK_RSS = """
import re, sys
from visionbench.main import main
status = main(sys.argv[1:])
with open("/proc/self/status") as status_file:
    print("peak-rss-kib", re.search(r"VmHWM:\\s+(\\d+) kB", status_file.read())[1], flush=True)
sys.exit(status)
"""


def _train_args(batch):
    # ResNet18 at 64 px, 3 steps on synthetic data: small, yet its activations vary with the batch.
    return ["--device", "cpu", "-n", "1", "-b", str(batch), "--data-backend", "synthetic", "--num-examples",
            str(3 * batch), "-e", "2", "--mode", "train", "--benchmark", "--benchmark-warmup-epochs", "1",
            "--image-size", "64", "--num-layers", "18", "--num-classes", "1000"]


def _peak_rss(batch):
    """Peak resident memory (bytes) of a real training process."""
    result = subprocess.run([runner_env()["PYTHON"], "-c", PEAK_RSS, *_train_args(batch)], capture_output=True,
                            text=True, timeout=300, cwd=ROOT, env=runner_env())
    assert result.returncode == 0, result.stderr
    return int(re.search(r"peak-rss-kib (\d+)", result.stdout)[1]) * 1024


def test_the_memory_estimate_follows_the_measured_peak_of_real_runs():
    from visionbench.config import resolve

    small, large = 16, 64
    estimates = {b: memory.estimate_training_memory(resolve(_train_args(b)), 1) for b in (small, large)}
    peaks = {b: _peak_rss(b) for b in (small, large)}
    for batch in (small, large):
        # The refusal rests on this: the estimate is never more than 1.5 x the real peak (a run
        # is refused beyond REFUSE_FACTOR = 2 x the machine), and not far below it (about 1.1 here).
        ratio = estimates[batch].per_worker / peaks[batch]
        assert 1 / 1.5 <= ratio <= 1.5, (batch, ratio, peaks, estimates)
    # What the activations add per image, measured against estimated (about 0.93 of it for ResNet18).
    measured = (peaks[large] - peaks[small]) / (large - small)
    estimated = (estimates[large].per_worker - estimates[small].per_worker) / (large - small)
    assert 0.6 * estimated <= measured <= 1.2 * estimated, (measured / MIB, estimated / MIB)


def test_the_estimate_counts_devices_and_workers():
    base = replace(Config(), device="cpu", num_devices=1, batch_size=32, image_size=64, num_layers=18,
                   num_classes=10)
    one = memory.estimate_training_memory(base, 1)
    two_devices = memory.estimate_training_memory(replace(base, num_devices=2), 1)
    assert two_devices.per_worker > 1.5 * (one.per_worker - memory.RUNTIME_BYTES) + memory.RUNTIME_BYTES
    # Workers share nothing: each needs what one does, and the text names both figures.
    three = memory.estimate_training_memory(base, 3)
    assert three.per_worker == one.per_worker
    assert three.text().startswith(f"an estimated {memory.gib(3 * one.per_worker)} GiB (3 workers x "
                                   f"{memory.gib(one.per_worker)} GiB: "), three.text()
    bigger = memory.estimate_training_memory(replace(base, image_size=128), 1)
    assert bigger.per_worker > one.per_worker and bigger.image_size == 128


def test_the_estimate_of_a_phased_run_is_its_heaviest_phase():
    # The heaviest phase (32 px x batch 64: 65536 pixels a device per step) is neither the one at
    # the largest size (64 px x 8: 32768) nor the last (32 px x 16); the run's own -b/--image-size
    # (64 px x 32, heavier than every phase) never train: the first phase starts at epoch 0.
    base = replace(Config(), device="cpu", num_devices=1, batch_size=32, image_size=64, num_layers=18,
                   num_classes=10)
    phases = ("[{'ep': 0, 'sz': 64, 'bs': 8}, {'ep': 1, 'sz': 32, 'bs': 64}, {'ep': 2, 'sz': 32, 'bs': 16}, "
              "{'ep': (0, 3), 'lr': 0.1}]")
    phased = memory.estimate_training_memory(replace(base, phases=phases), 1)
    assert (phased.image_size, phased.batch_size) == (32, 64), phased
    alone = {(size, batch): memory.estimate_training_memory(replace(base, image_size=size, batch_size=batch), 1)
             for size, batch in ((64, 8), (32, 64), (32, 16))}
    assert phased.per_worker == alone[32, 64].per_worker > max(alone[64, 8].per_worker, alone[32, 16].per_worker)


def test_a_sigkill_is_blamed_on_the_out_of_memory_killer_only_when_the_figures_say_so():
    config = replace(Config(), device="cpu", num_devices=1, batch_size=8, image_size=32, num_layers=18,
                     num_classes=10)
    estimate = memory.estimate_training_memory(config, 2)
    needs = f"this run needs {estimate.text()}, and this machine has"
    # The estimate a small share of the machine (as 0.6 of 23 GiB): the kill came from outside the job.
    far = memory.sigkill_explanation(config, 2, machine=round(estimate.node * 23 / 0.6))
    assert far.startswith("it was killed from outside the job (the kernel's out-of-memory killer is still possible "
                          "if other processes use the memory): " + needs), far
    # At or beyond 1/1.5 of the machine (the real peak may be 1.5 x the estimate): the out-of-memory killer.
    for machine in (estimate.node, round(estimate.node * 1.4)):
        close = memory.sigkill_explanation(config, 2, machine=machine)
        assert close == f"most likely the kernel's out-of-memory killer: {needs} {memory.gib(machine)} GiB", close
    assert "outside the job" in memory.sigkill_explanation(config, 2, machine=round(estimate.node * 1.6))
    gpu = memory.sigkill_explanation(replace(config, device="gpu"), 2, machine=24 * 2 ** 30)
    assert gpu == ("it was killed from outside the job (a user, a batch scheduler, or the kernel's out-of-memory "
                   "killer: this machine has 24.0 GiB of host memory)")


def _limit_address_space():
    # If the refusal ever broke, the job must fail to allocate, not exhaust the machine's memory.
    resource.setrlimit(resource.RLIMIT_AS, (4 * 2 ** 30, 4 * 2 ** 30))


def test_a_cpu_job_far_beyond_this_machines_memory_is_refused_before_any_process_starts(tmp_path):
    # The command (ResNet50, 224 px, batch 192, 2 workers) on a 24 GiB machine; on a
    # bigger machine the batch grows with it so that the job still cannot fit.
    machine = memory.machine_memory()
    batch = 192 * max(1, math.ceil(machine / (24 * 2 ** 30)))
    command = ["bash", str(ROOT / "runner"), "--kv-store", "dist_sync", "--local-workers", "2", "--device", "cpu",
               "-n", "1", "-b", str(batch), "--data-backend", "synthetic", "--model-prefix", str(tmp_path / "m")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=runner_env(),
                            preexec_fn=_limit_address_space)
    assert result.returncode == 2, result.stdout + result.stderr
    line = one_line_error(result)
    found = re.search(r"needs an estimated ([\d.]+) GiB \(2 workers x ([\d.]+) GiB: .* batch (\d+) at 224 px\), "
                      r"and this machine has ([\d.]+) GiB", line)
    assert found, line
    assert float(found[1]) > memory.REFUSE_FACTOR * float(found[4]) and int(found[3]) == batch
    assert found[4] == memory.gib(machine)
    assert "started" not in result.stdout and list(tmp_path.iterdir()) == []


def test_machine_memory_reads_ram_and_swap(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24684096 kB\nMemFree: 1 kB\nSwapTotal:       1048576 kB\n")
    assert memory.machine_memory(str(meminfo)) == (24684096 + 1048576) * 1024
    assert memory.machine_memory(str(tmp_path / "none")) is None


# --- pointwise fusion on Ada with an NVRTC older than 11.8 (GPU-only settings, pure rules) ---

ADA = Gpu(0, "NVIDIA L4", (8, 9))
AMPERE = Gpu(1, "NVIDIA A100", (8, 0))


def test_fusion_is_turned_off_only_where_nvrtc_cannot_compile_for_the_gpu():
    assert fusion_blocking_gpus([AMPERE, ADA], (11, 2)) == [ADA]
    assert fusion_blocking_gpus([AMPERE, ADA], (11, 8)) == []
    assert fusion_blocking_gpus([AMPERE, ADA], None) == [ADA]         # unknown NVRTC: do not risk it
    assert fusion_blocking_gpus([AMPERE, Gpu(2, "RTX A6000", (8, 6))], (11, 2)) == []
    assert mxnet_environment("gpu", False, fusion_off=True)["MXNET_USE_FUSION"] == "0"
    assert "MXNET_USE_FUSION" not in mxnet_environment("gpu", False, fusion_off=False)
    assert mxnet_environment("cpu", False, fusion_off=True) == {}


def test_the_users_fusion_setting_wins():
    environ = {"MXNET_USE_FUSION": "1"}
    apply_environment("gpu", False, environ, fusion_off=True)
    assert environ["MXNET_USE_FUSION"] == "1" and environ["MXNET_OPTIMIZER_AGGREGATION_SIZE"] == "54"
    environ = {}
    apply_environment("gpu", False, environ, fusion_off=True)
    assert environ["MXNET_USE_FUSION"] == "0"


def test_the_self_test_says_whether_fusion_will_fail():
    from visionbench.selftest import fusion_line

    assert fusion_line([ADA], (11, 2), "0").startswith("pointwise fusion: off (MXNET_USE_FUSION=0): GPU 0 "
                                                         "(NVIDIA L4) has compute capability 8.9")
    assert "WILL FAIL" in fusion_line([ADA], (11, 2), "1")
    assert fusion_line([ADA], (11, 8), None) == "pointwise fusion: on (MXNET_USE_FUSION=unset)"
