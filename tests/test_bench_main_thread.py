"""bench.main_thread's input checks (its measurement is a benchmark, run by `make bench`)."""
from visionbench.bench.main_thread import main
from visionbench.cli import run_main
from visionbench.selftest import write_colour_set


def test_a_given_set_too_short_for_the_steps_is_refused_in_one_line(tmp_path, capsys):
    # 24 records x --packed 1 = 3 steps of 2 x 4: fewer than 1 warm-up + 3 timed.
    (tmp_path / "set").mkdir()
    write_colour_set(tmp_path / "set" / "train", 24)
    files = sorted((tmp_path / "set").iterdir())
    args = ["--data", str(tmp_path / "set"), "--packed", "1", "-n", "2", "-b", "4", "--warmup", "1",
            "--steps", "3", "--repeats", "1", "--device-ms", "0"]
    assert run_main(main, "main_thread", args) == 2
    assert capsys.readouterr().err == (f"main_thread: error: --warmup + --steps (4) must fit in one epoch of "
                                       f"{tmp_path / 'set' / 'train'} (24 records: 3 steps of 2 x 4)\n")
    assert sorted((tmp_path / "set").iterdir()) == files
