"""What a user sees: fastgen's own progress bars and warnings on the console, Ray's internals in a log file.

By default (:func:`configure` with ``verbose=False``):

* the console (stderr) shows fastgen's own log lines (INFO and up), warnings and errors from anywhere, and one
  ``tqdm`` progress bar per long step (:func:`bar`): training steps with loss and s/step, segmenter steps, committed
  pairs or masks with their rate and ETA;
* everything else — Ray's and Ray Data's INFO lines (operator dumps, "Reporting training result"), Python warnings
  such as Ray's deprecation notices — goes to the log file (:func:`log_path`, printed at start) and not to the
  console; Ray workers' own output stays in Ray's session logs (``log_to_driver`` off), and Ray's C++ core logs only
  fatal lines. A failure still surfaces: worker errors come back as exceptions with their message, and every
  WARNING or ERROR record reaches the console.

``--verbose`` turns all of that back on: DEBUG lines, Ray's loggers and workers' output live on the console.

Progress from Ray Train workers reaches the driver's bar through a :class:`ProgressChannel` (a Ray queue actor):
rank 0 puts ``{"step": k, ...}`` records, a driver thread moves the bar.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tqdm import tqdm

OWN_LOGGERS = ("fastgen", "pipelines", "jobs", "fast_core", "benchmarks", "__main__")
# Library warnings that ask nothing of the user (file only): Ray Data noting the progress bars fastgen turned off.
FILE_ONLY_WARNINGS = ("py.warnings", "ray.data._internal.progress")
LOG_DIR_ENV = "FASTGEN_LOG_DIR"
# Ray Data's own logging config (RAY_DATA_LOGGING_CONFIG): its records go to Ray's session file and propagate to
# the root logger (our log file, and the console filter below), instead of Ray Data's own console handler.
_RAY_DATA_LOGGING = """\
version: 1
disable_existing_loggers: false
formatters:
  ray: {format: "%(asctime)s\\t%(levelname)s %(filename)s:%(lineno)s -- %(message)s"}
handlers:
  file: {class: ray.data._internal.logging.SessionFileHandler, formatter: ray, filename: ray-data.log}
loggers:
  ray.data: {level: DEBUG, handlers: [file], propagate: true}
"""

_state: dict[str, Any] = {"verbose": True, "log_path": None, "handlers": []}


class _ConsoleFilter(logging.Filter):
    """Quiet mode: fastgen's own records at INFO and up; anyone else's only at WARNING and up."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "console", True):  # a line a progress bar already shows (extra={"console": False})
            return False
        if record.levelno >= logging.WARNING:
            return record.name not in FILE_ONLY_WARNINGS  # e.g. deprecation notices: the file only
        return record.levelno >= logging.INFO and record.name.split(".")[0] in OWN_LOGGERS


class _TqdmHandler(logging.StreamHandler):
    """Writes log lines through ``tqdm.write`` so they do not tear an active progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never raise
            self.handleError(record)


def configure(command: str, verbose: bool = False, log_dir: str | os.PathLike[str] | None = None) -> Path:
    """Set up logging for one ``fastgen`` command; returns the log file's path.

    Args:
        command: the subcommand (the log file is ``<log_dir>/<command>-<UTC time>-<pid>.log``).
        verbose: everything live on the console (DEBUG, Ray's loggers, workers' output).
        log_dir: where the log file goes (default ``$FASTGEN_LOG_DIR``, else ``fastgen-logs`` in the working folder).
    """
    folder = Path(log_dir or os.environ.get(LOG_DIR_ENV) or "fastgen-logs")
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = (folder / f"{command}-{stamp}-{os.getpid()}.log").resolve()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    for handler in _state["handlers"]:  # a second configure in one process (tests) replaces only its own
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setFormatter(fmt)
    console = _TqdmHandler()
    console.setFormatter(fmt)
    if not verbose:
        console.addFilter(_ConsoleFilter())
        logging.getLogger("ray").setLevel(logging.INFO)
        with contextlib.suppress(OSError):
            cfg = Path(tempfile.gettempdir()) / "fastgen-ray-data-logging.yaml"
            cfg.write_text(_RAY_DATA_LOGGING)
            os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(cfg))
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # the driver's C++ core lines (session logs keep them)
    # A host that set up logging already (pytest, a notebook) keeps its console, as logging.basicConfig would.
    ours = [file_handler] if root.handlers else [file_handler, console]
    for handler in ours:
        root.addHandler(handler)
    logging.captureWarnings(True)
    _state.update(verbose=verbose, log_path=path, handlers=ours, announced=False)
    if not verbose:
        route_ray_loggers()
    return path


def route_ray_loggers() -> None:
    """Quiet mode: Ray's and Ray Data's loggers lose their own console handlers and propagate to ours (file, and the
    console filter). Called again after ``ray.init``, which may configure them anew."""
    if verbose():
        return
    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        lg = logging.getLogger(name)
        for handler in list(lg.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                lg.removeHandler(handler)
        lg.propagate = True


def announce_log() -> None:
    """Print where the log file is, once per command (when real work starts: a config error stays one line)."""
    path = _state["log_path"]
    if path is not None and not _state.get("announced") and not verbose():
        _state["announced"] = True
        tqdm.write(f"fastgen: full log in {path} (-v shows Ray's output live)", file=sys.stderr)


def verbose() -> bool:
    """Whether Ray's and the workers' output should be live on the console (True unless :func:`configure` said
    otherwise: library use and tests see everything)."""
    return bool(_state["verbose"])


def log_path() -> Path | None:
    """The log file of this command (None outside the CLI)."""
    return _state["log_path"]


def bar(total: int, desc: str, unit: str, initial: int = 0) -> tqdm:
    """A progress bar on stderr (a line every 10 s when stderr is not a terminal)."""
    interactive = sys.stderr.isatty()
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.5 if interactive else 10.0,
        smoothing=0.1,
        leave=True,
    )


class ProgressChannel:
    """Worker → driver progress records over a Ray queue actor (0 CPUs); :meth:`follow` drives a bar from them."""

    def __init__(self) -> None:
        from ray.util.queue import Queue

        self.queue = Queue(maxsize=1000, actor_options={"num_cpus": 0})

    def put(self, record: dict[str, Any]) -> None:
        """Called on a worker: never blocks training (a full queue drops the record)."""
        with contextlib.suppress(Exception):
            self.queue.put_nowait(record)

    @contextlib.contextmanager
    def follow(self, total: int, desc: str, unit: str, initial: int = 0) -> Iterator[tqdm]:
        """A bar moved to each record's ``step`` (postfix: its other numbers) until the block ends."""
        progress = bar(total, desc, unit, initial)
        stop = threading.Event()

        def pump() -> None:
            while not stop.is_set():
                try:
                    records = self.queue.get_nowait_batch(self.queue.qsize())
                except Exception:  # the queue actor is gone (shutdown): nothing more to show
                    return
                for r in records:
                    progress.update(max(0, int(r.get("step", progress.n)) - progress.n))
                    post = {k: v for k, v in r.items() if k != "step" and isinstance(v, int | float)}
                    progress.set_postfix({k: f"{v:.4g}" for k, v in post.items()}, refresh=False)
                time.sleep(0.5)

        thread = threading.Thread(target=pump, name="fastgen-progress", daemon=True)
        thread.start()
        try:
            yield progress
        finally:
            stop.set()
            thread.join(timeout=5)
            progress.close()
            with contextlib.suppress(Exception):
                self.queue.shutdown()
