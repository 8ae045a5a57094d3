"""Where a sweep's log goes: the terminal gets short lines, `--log-file` the whole story.

The terminal (stderr) shows warnings only, one line each: a failed trial as its error and the
line that raised it, never the full traceback (the progress display shares the screen, and a
traceback per failed trial buries it). The log file, when given, gets everything from INFO up
(one line per finished trial, the waits for other workers, each failure with its full
traceback), each line stamped with the time and the process id. The bookkeeping process is
forked with these handlers, and the workers of `--workers` open the same file, so every process
of a sweep appends to one file (appends of whole lines, which do not interleave).
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import TextIO

import optuna
from optuna.trial import FrozenTrial

from sweeps.errors import LogFileError
from sweeps.loop.progress import CLEAR_LINE, finished_text

LOGGER = "sweeps"
FILE_FORMAT = "%(asctime)s pid %(process)d %(levelname)s %(message)s"


class ShortFormatter(logging.Formatter):
    """The message, and for an exception the place it was raised: file:line in function."""

    def __init__(self, clear_line: bool, hint: str):
        super().__init__()
        self.clear_line = clear_line  # a terminal: wipe the live progress line first
        self.hint = hint

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info and record.exc_info[2] is not None:
            frame = traceback.extract_tb(record.exc_info[2])[-1]
            text += f" (at {short_path(frame.filename)}:{frame.lineno} in {frame.name}; {self.hint})"
        return (CLEAR_LINE if self.clear_line else "") + text


class Tagged:
    """Marks this module's handlers, so configuring again replaces them (tests run main twice)."""


class TerminalHandler(logging.StreamHandler, Tagged):
    pass


class LogFileHandler(logging.FileHandler, Tagged):
    pass


def configure(log_file: str | None, stream: TextIO | None = None) -> None:
    """The `sweeps` logger of a run: short warnings on `stream` (stderr), the full log in `log_file`."""
    logger = logging.getLogger(LOGGER)
    for handler in [h for h in logger.handlers if isinstance(h, Tagged)]:
        logger.removeHandler(handler)
        handler.close()
    stream = stream or sys.stderr
    hint = f"full traceback in {log_file}" if log_file else "--log-file PATH keeps the full traceback"
    terminal = TerminalHandler(stream)
    terminal.setLevel(logging.WARNING)
    terminal.setFormatter(ShortFormatter(is_tty(stream), hint))
    logger.addHandler(terminal)
    logger.setLevel(logging.INFO if log_file else logging.WARNING)
    if log_file:
        try:
            handler = LogFileHandler(log_file, mode="a", encoding="utf-8")
        except OSError as err:
            logger.removeHandler(terminal)
            raise LogFileError(f"--log-file {log_file}: cannot open it for appending ({err.strerror}); "
                               "name a file in a folder that exists and you can write to") from None
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter(FILE_FORMAT))
        logger.addHandler(handler)


class TrialLog:
    """An Optuna callback: a line per finished trial in the log file (with or without a display)."""

    def __init__(self, metric: str):
        self.metric = metric

    @staticmethod
    def wanted() -> bool:
        """Only with a log file: otherwise the callback would cost a trial read for nothing."""
        return logging.getLogger(LOGGER).isEnabledFor(logging.INFO)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        logging.getLogger(LOGGER).info(finished_text(trial, self.metric))


def short_path(path: str) -> str:
    """A path under the working directory, relative to it; any other as it is."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return path
    return path if relative.startswith("..") else relative


def is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
