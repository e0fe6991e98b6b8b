"""What every command-line entry point shares: one-line errors with exit status 2.

Bad input is reported as ``PROG: error: WHAT (WHERE)`` on stderr with exit
status 2, never a traceback. SIGTERM is turned into an exception so that
``finally`` blocks remove temporary files before the process exits (143).
"""
from __future__ import annotations

import argparse
import signal
import sys
from typing import Callable, Optional, Sequence

EXIT_USAGE = 2
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit status 2."""


class RunFailure(Exception):
    """A run that cannot go on (a full disk, a diverged loss): one line,
    exit status 1; what was written before stays intact."""


class Interrupted(BaseException):
    """A run stopped by a signal after saving its position: one line, exit
    status 130 (SIGINT) or 143 (SIGTERM, SIGUSR1)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class Terminated(BaseException):
    """Raised in the main thread when SIGTERM arrives (a BaseException so that
    ``except Exception`` blocks do not swallow it)."""


def last_error_line(err: BaseException, limit: int = 200) -> str:
    """What failed, in one line: MXNet's errors carry a C++ traceback, and
    their last line says it."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[-1] if lines else type(err).__name__
    return text.replace("MXNetError: ", "")[:limit]


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a single-line error instead of usage + error."""

    def error(self, message: str):  # noqa: D401 - argparse's API
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(EXIT_USAGE)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def die_with_parent() -> None:
    """In a child process (``preexec_fn``/pool initializer): get SIGKILL when
    the parent dies (Linux), so a SIGKILLed parent leaves no orphans."""
    if sys.platform.startswith("linux"):
        import ctypes
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _raise_terminated(signum, frame):
    raise Terminated()


def run_main(main: Callable[[Optional[Sequence[str]]], Optional[int]], prog: str,
             argv: Optional[Sequence[str]] = None) -> int:
    """Run ``main(argv)`` and map failures to exit statuses and one-line messages."""
    # SIGUSR1: what batch schedulers send before a kill; treated as SIGTERM
    # (the training loop installs its own handlers for both, see engine/run.py).
    previous = {sig: signal.signal(sig, _raise_terminated) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        return main(argv) or 0
    except UsageError as err:
        # One line, whatever the message (library errors can span several).
        text = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
        sys.stderr.write(f"{prog}: error: {text}\n")
        return EXIT_USAGE
    except RunFailure as err:
        sys.stderr.write(f"{prog}: error: {err}\n")
        return 1
    except Interrupted as err:
        sys.stderr.write(f"{prog}: {err}\n")
        return err.status
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted; no finished output was written\n")
        return EXIT_SIGINT
    except BrokenPipeError:
        # `train.py --print-schedule | head`: the reader left; not an error.
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Terminated:
        sys.stderr.write(f"{prog}: terminated; no finished output was written\n")
        return EXIT_SIGTERM
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
