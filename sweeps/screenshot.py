"""`python -m sweeps.screenshot STUDY.yaml OUT.png [--trial N]`: the dashboard, as headless Chromium shows it.

Serves the study's dashboard (as `sweeps.dashboard` does) on a free 127.0.0.1 port for as long as
Chromium needs it, then saves a screenshot of the study page, or of one trial's page with its
note and checkpoint. Needs Chromium (Debian: `apt-get install chromium`). The user guide's dashboard
pictures (docs/guide/report.md) are made with this command.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

from storage.optuna_private import study_id_of
from sweeps import exits
from sweeps.cli import add_study_arguments, fail, run_command
from sweeps.results.existing import Existing, load, open_existing
from sweeps.trial.checkpoints import artifact_dir, open_artifact_store

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--no-first-run", "--mute-audio"]


def find_chromium() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def headless(url: str, *, screenshot: Path | None = None, dump_dom: bool = False, size: tuple[int, int] = (1400, 1000),
             budget_ms: int = 15000, timeout_s: float = 120) -> str:
    """Load `url` in headless Chromium, let its scripts run `budget_ms` of virtual time; return the DOM."""
    browser = find_chromium()
    if browser is None:
        raise FileNotFoundError("no Chromium found (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="sweeps-chromium-") as profile:
        command = [browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
                   f"--virtual-time-budget={budget_ms}"]
        command += [f"--screenshot={screenshot}"] if screenshot else []
        command += ["--dump-dom"] if dump_dom else []
        done = subprocess.run(command + [url], capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0 or (screenshot and not Path(screenshot).is_file()):
        raise RuntimeError(f"chromium failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def serving(existing: Existing) -> Iterator[str]:
    """The study's dashboard on a free 127.0.0.1 port in a background thread; yields its base URL."""
    import optuna_dashboard

    store = open_artifact_store(artifact_dir(existing.config, existing.target.storage_url,
                                             existing.target.study_name), create=False)
    app = optuna_dashboard.wsgi(existing.storage, artifact_store=store)
    server = make_server("127.0.0.1", 0, app, handler_class=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sweeps screenshot", description=__doc__.splitlines()[0],
                                     epilog="example:\n  sweeps screenshot study.yaml dashboard.png --trial 3\n",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_arguments(parser)
    parser.add_argument("out", help="PNG file to write")
    parser.add_argument("--trial", type=int, help="show this trial's page (note, values, checkpoint)")
    parser.add_argument("--size", default="1400x1000", help="window WIDTHxHEIGHT (default 1400x1000)")
    args = parser.parse_args(argv)
    return run_command(lambda: screenshot(args), args.study_file)


def screenshot(args: argparse.Namespace) -> int:
    existing = open_existing(args.study_file, args.storage, args.study_name)
    study = load(existing)
    width, height = (int(v) for v in args.size.lower().split("x"))
    page = f"/dashboard/studies/{study_id_of(study)}"
    if args.trial is not None:
        page += f"/trials?numbers={args.trial}"
    out = Path(args.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with serving(existing) as base:
        try:
            headless(base + page, screenshot=out, size=(width, height))
        except (FileNotFoundError, RuntimeError, subprocess.TimeoutExpired) as err:
            return fail(exits.FAILED, str(err))
    print(f"wrote {out}")
    return exits.OK


if __name__ == "__main__":
    sys.exit(main())
