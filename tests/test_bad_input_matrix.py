"""The bad-input matrix: every case exits with status 2 and one line on
stderr (no traceback), and leaves every file in the working folder as it was
(hashed before and after). train.py's and benchmark.py's cases run on both
engines (MXNet, the default, and --engine torch) unless a case says which."""
import hashlib
import os
import shutil
import subprocess
import sys

import pytest

from conftest import DATA_PREP, make_small_demo, one_line_error, run_here

RUN = ["--device", "cpu", "-n", "1", "-b", "2", "--image-size", "16", "--num-layers", "18", "--num-classes", "10",
       "-e", "1", "--model-prefix", "m"]
SYN = RUN + ["--data-backend", "synthetic", "--num-examples", "8"]
# What MLPerf's closed division accepts (ResNet50 v1.5 at 224 px, LARS, poly, validation every 4 epochs): each
# case below changes one thing, and the refusal names that one alone.
CLOSED = ["--device", "cpu", "-n", "1", "-b", "2", "--num-classes", "10", "-e", "1", "--model-prefix", "m",
          "--data-root", "data", "--mlperf-log", "new.log", "--target-top1", "0.759", "--optimizer", "lars",
          "--lr-schedule", "poly", "--eval-period", "4"]
CLOSED_SGD = CLOSED[:-5] + ["sgd", "--lr-schedule", "poly", "--eval-period", "4", "--lr", "0.128"]   # base LR 0.001


def closed_needs(what):
    return f"--mlperf-division closed needs {what}: MLPerf's closed rules fix these"

# A case's words: one string when both engines refuse it in those words, or {engine: words}
# for the engines that refuse it (each in its own words).
CASES = [
    # ./runner (train.py)
    ("runner", SYN + ["-b", "0"], "batch-size must be at least 1"),
    ("runner", SYN + ["-b", "abc"], "invalid int value: 'abc'"),
    ("runner", SYN + ["--lr", "-1"], "lr must not be negative"),
    ("runner", SYN + ["--dtype", "float8"], "invalid choice: 'float8'"),
    ("runner", SYN + ["--bogus"], "unrecognized arguments: --bogus"),
    ("runner", RUN + ["--data-root", "missing"], "--data-root missing is not a folder"),
    ("runner", SYN + ["--config", "missing.json"], "recipe missing.json cannot be read"),
    ("runner", SYN + ["--config", "badkey.json"], "unknown option 'bogus'"),
    ("runner", SYN + ["--config", "badtype.json"], "batch_size must be int, got 'x'"),
    ("runner", SYN + ["--config", "notjson.json"], "is not valid JSON"),
    ("runner", SYN + ["--config", "adir"], "cannot be read (Is a directory)"),
    ("runner", SYN + ["--phases", "[{'ep':0"], "phases"),
    ("runner", SYN + ["--phases", "[{'ep':(0,2),'lr':(1,2)},{'ep':1,'zz':3}]"], "zz"),
    ("runner", SYN + ["--dtype", "float16"], "float16 needs GPUs"),
    ("runner", SYN[2:] + ["--device", "gpu"], {"mxnet": "MXNet sees no GPU", "torch": "PyTorch sees no GPU"}),
    ("runner", RUN + ["--data-root", "badidx"], "record 1 of badidx/train.rec is truncated or corrupted"),
    ("runner", RUN + ["--data-root", "trunc"], "trunc/train.idx does not match trunc/train.rec"),
    ("runner", SYN + ["--report", "old.json"], "old.json already exists"),
    ("runner", SYN + ["--model-prefix", "nodir/m"], "folder nodir does not exist"),
    ("runner", SYN + ["--local-workers", "2"], "add --kv-store dist_sync"),
    ("runner", SYN + ["--benchmark", "-e", "2"], "use it with --mode train"),
    ("runner", SYN + ["--min-random-area", "0"], "min-random-area must be in (0, 1]"),
    ("runner", SYN + ["--kv-store", "dist_sync", "--node-rank", "3", "--nnodes", "2"], "--node-rank must be in 0..1"),
    ("runner", SYN + ["--bad-records", "ignore"], "invalid choice: 'ignore'"),
    # (the torch engine refuses --data-backend mxnet itself: test_torch_engine)
    ("runner", RUN + ["--data-root", "data", "--data-backend", "mxnet", "--bad-records", "skip"],
     {"mxnet": "--bad-records skip needs a DALI backend"}),
    ("runner", SYN + ["--eval-period", "0"], "eval-period must be at least 1"),
    ("runner", SYN + ["--target-top1", "75.9"], "target-top1 is a fraction of the val images"),
    ("runner", RUN + ["--data-root", "data", "--mode", "train", "--mlperf-log", "new.log", "--target-top1", "0.7"],
     "--mlperf-log times training to a validation target: use --mode train_val"),
    ("runner", RUN + ["--data-root", "data", "--mlperf-log", "new.log"], "--mlperf-log needs --target-top1"),
    ("runner", RUN + ["--data-root", "data", "--mlperf-log", "new.log", "--target-top1", "0.7"],
     "--mlperf-division closed needs --lr-schedule poly (got step)"),
    ("runner", RUN + ["--data-root", "data", "--mlperf-log", "old.json", "--target-top1", "0.7",
                      "--mlperf-division", "open"], "old.json already exists"),
    ("runner", SYN + ["--wd", "nan"], "wd must be a finite number, got nan"),
    ("runner", RUN + ["--data-root", "data", "--mlperf-log", "r.json", "--report", "r.json", "--target-top1", "0.7",
                      "--mlperf-division", "open"], "--mlperf-log and --report name the same file r.json"),
    ("runner", CLOSED + ["--eval-period", "2"], closed_needs("--eval-period 4 with --eval-offset 0, 1, 2 or 3 (got "
                                                            "period 2, offset 0)")),
    ("runner", CLOSED + ["--eval-offset", "4"], closed_needs("--eval-period 4 with --eval-offset 0, 1, 2 or 3 (got "
                                                            "period 4, offset 4)")),
    ("runner", CLOSED + ["-i", "3"], closed_needs("whole epochs, no -i/--iterations (got 3)")),
    ("runner", CLOSED + ["--lars-eta", "0.002"], closed_needs("--lars-eta 0.001 (got 0.002)")),
    ("runner", CLOSED + ["--num-layers", "18"], closed_needs("ResNet50 v1.5, --arch resnetv15 --num-layers 50 (got "
                                                            "resnet18_v1.5)")),
    ("runner", CLOSED + ["--arch", "resnetv1"], closed_needs("ResNet50 v1.5, --arch resnetv15 --num-layers 50 (got "
                                                            "resnet50_v1)")),
    ("runner", CLOSED + ["--image-size", "160"], closed_needs("--image-size 224 (got 160)")),
    ("runner", CLOSED_SGD + ["--warmup-epochs", "1.5"], closed_needs("whole --warmup-epochs with --optimizer sgd "
                                                                     "(got 1.5)")),
    # benchmark.py
    ("benchmark", ["--device", "cpu", "-n", "0", "-b", "4"], "positive integers"),
    ("benchmark", ["--device", "cpu", "-n", "1", "-b", "4", "--dtype", "bfloat16"], "float16, float32 and/or int8"),
    ("benchmark", ["--device", "cpu", "-n", "1", "-b", "4", "-e", "2", "-w", "2"], "nothing would be timed"),
    ("benchmark", ["--device", "cpu", "-n", "1", "-b", "4", "--mode", "val"], "--mode is set by benchmark.py"),
    ("benchmark", ["--device", "cpu", "-n", "1", "-b", "4", "-o", "old.json"], "old.json already exists"),
    ("benchmark", ["--device", "cpu", "-n", "1", "-b", "4", "--lr", "fast"], "invalid float value: 'fast'"),
    ("benchmark", ["-n", "1,4,8", "-b", "208", "--dtype", "float16"],
     {"mxnet": "MXNet sees no GPU", "torch": "PyTorch sees no GPU"}),
    # data_prep
    ("folder_to_rec.py", ["data/images/nothere", "out"], "source folder data/images/nothere does not exist"),
    ("folder_to_rec.py", ["data/images/train", "data/train"], "data/train.lst already exists"),
    ("folder_to_rec.py", ["data/images/train", "out", "--resize", "-5"], "expected a positive integer, got '-5'"),
    ("folder_to_rec.py", ["data/images/train", "out", "--classes", "nofile.txt"], "class list nofile.txt cannot be read"),
    ("verify_rec.py", ["trunc/train"], "lies outside trunc/train.rec"),
    ("verify_rec.py", ["nothere/train"], "nothere/train.rec does not exist"),
    ("cifar10_to_rec.py", ["adir", "out"], "data_batch_1 is missing"),
    ("make_demo_data.py", ["data", "--no-progress"], "data/train.lst already exists"),
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("matrix")
    make_small_demo(root / "data", 3, 2)
    shutil.copytree(root / "data", root / "badidx")
    lines = (root / "data" / "train.idx").read_text().splitlines()
    key, offset = lines[1].split("\t")
    lines[1] = f"{key}\t{int(offset) + 1}"   # points one byte into a record
    (root / "badidx" / "train.idx").write_text("\n".join(lines) + "\n")
    shutil.copytree(root / "data", root / "trunc")
    with open(root / "trunc" / "train.rec", "r+b") as handle:
        handle.truncate(3000)
    (root / "adir").mkdir()
    (root / "badkey.json").write_text('{"bogus": 1}\n')
    (root / "badtype.json").write_text('{"batch_size": "x"}\n')
    (root / "notjson.json").write_text("{nope\n")
    (root / "old.json").write_text("{}\n")
    return root


def _digest(root):
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                out[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
    return out


def _command(tool, args):
    return [sys.executable, str(DATA_PREP / tool), *args]


# train.py's and benchmark.py's cases run their main in this process, as the
# scripts do (run_here: exit status and stderr); many are refused only after
# MXNet is imported, seconds of start-up each in a fresh interpreter. The
# data_prep tools, which start in a fraction of a second, run as scripts.
IN_PROCESS = {"runner": "train.py", "benchmark": "benchmark.py"}
ENGINES = ("mxnet", "torch")
ENGINE_FLAGS = {"mxnet": [], "torch": ["--engine", "torch"]}   # MXNet: the default engine, as users run it


def _runs(cases):
    """One run a case and engine (the data_prep tools have no engine)."""
    for index, (tool, args, words) in enumerate(cases):
        if tool not in IN_PROCESS:
            yield pytest.param(tool, args, words, id=f"{tool}-{index}")
            continue
        by_engine = words if isinstance(words, dict) else dict.fromkeys(ENGINES, words)
        for engine, engine_words in by_engine.items():
            yield pytest.param(tool, args + ENGINE_FLAGS[engine], engine_words, id=f"{tool}-{index}-{engine}")


RUNS = list(_runs(CASES))


def test_the_matrix_is_wide():
    assert len(CASES) >= 30 and {tool for tool, _, _ in CASES} >= {"runner", "benchmark", "folder_to_rec.py",
                                                                    "verify_rec.py", "cifar10_to_rec.py"}
    on_torch = [run for run in RUNS if run.id.endswith("-torch")]
    assert len(on_torch) >= 40 and {run.values[0] for run in on_torch} == {"runner", "benchmark"}


@pytest.mark.parametrize("tool, args, words", RUNS)
def test_bad_input(workdir, tool, args, words, capfd, monkeypatch):
    before = _digest(workdir)
    if tool in IN_PROCESS:
        monkeypatch.chdir(workdir)
        result = run_here(capfd, *args, prog=IN_PROCESS[tool])
    else:
        result = subprocess.run(_command(tool, args), capture_output=True, text=True, timeout=120, cwd=workdir,
                                env=dict(os.environ, PYTHON=sys.executable))
    assert result.returncode == 2, result.stderr
    assert words in one_line_error(result)
    assert _digest(workdir) == before
