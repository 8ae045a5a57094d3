"""What every command shares: how it is told where the study is, and how an error becomes one
line on stderr and an exit code from `sweeps.exits`.

Nothing here imports torch, so the read-only commands stay light.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable

from sweeps import exits
from sweeps.errors import Terminated, exit_for


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """The study file and where its store is: the same for every command."""
    parser.add_argument("study_file", help="the study YAML file")
    parser.add_argument("--storage", help="SQLAlchemy URL of the store (wins over $SWEEPS_STORAGE, "
                                          "then study.storage, then <study name>.db beside the file)")
    parser.add_argument("--study-name", help="study name in the store (overrides the file)")


def study_arguments_text(args: argparse.Namespace) -> str:
    """The arguments of `add_study_arguments` as given, for a command to print that names the same study."""
    given = [args.study_file, *(["--storage", args.storage] if args.storage else []),
             *(["--study-name", args.study_name] if args.study_name else [])]
    return shlex.join(given)


def add_override_argument(parser: argparse.ArgumentParser, passed_on: str) -> None:
    """`--set KEY.PATH=VALUE`, the same for every command that reads the study file to train."""
    parser.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY.PATH=VALUE",
                        help="override one key of the study file, e.g. --set search.base_lr.high=0.1 or "
                             "--set search.batch_size=[32,64] (a YAML value; repeatable; validated like the file, "
                             f"{passed_on})")


TEXT, JSON = "text", "json"  # what `--format` takes


def add_format_argument(parser: argparse.ArgumentParser) -> None:
    """`--format text|json`, the same for every command that can print its facts as one JSON document."""
    parser.add_argument("--format", choices=(TEXT, JSON), default=TEXT,
                        help="text: aligned tables (default); json: one JSON document on stdout with the same "
                             "facts (errors stay one line on stderr)")


def fail(code: int, message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def run_command(body: Callable[[], int], study_file: str) -> int:
    """Run a command's body; an error it cannot handle itself ends in one line and its code."""
    try:
        code = body()
        sys.stdout.flush()  # here, not at exit, so a closed pipe is met below
        return code
    except BrokenPipeError:  # `| head` closed stdout: stop quietly, and let no flush at exit fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return exits.BROKEN_PIPE
    except (Exception, KeyboardInterrupt, Terminated) as err:
        mapped = exit_for(err, study_file)
        if mapped is None:
            raise
        return fail(*mapped)
