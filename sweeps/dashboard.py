"""`python -m sweeps.dashboard STUDY.yaml [--port P] [--host H]`: optuna-dashboard on the study's store.

The store is found as the runner finds it (the study file, --storage, $SWEEPS_STORAGE), and the
checkpoint artifacts folder as the runner writes it, so the dashboard lists and serves the best
trials' weights. It binds to 127.0.0.1 unless --host says otherwise: the dashboard has no
authentication, and anyone who reaches the port can read and edit the study.
Exit codes (`sweeps.exits`): 0 stopped, 2 invalid study file or a port it cannot serve on, 3 store not
there or not readable, 4 no such study.
"""

from __future__ import annotations

import argparse
import sys

from storage.optuna_private import study_id_of
from sweeps import exits
from sweeps.cli import add_study_arguments, fail, run_command
from sweeps.results.existing import load, open_existing, ran_with
from sweeps.trial.checkpoints import artifact_dir, open_artifact_store

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sweeps dashboard",
                                     description="Serve optuna-dashboard for the study's store.",
                                     epilog="example:\n  sweeps dashboard study.yaml --port 8080\n",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_arguments(parser)
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; anything else exposes an unauthenticated UI)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_command(lambda: serve(args), args.study_file)


def serve(args: argparse.Namespace) -> int:
    existing = open_existing(args.study_file, args.storage, args.study_name)
    study = load(existing)
    import optuna_dashboard

    folder = artifact_dir(ran_with(existing, study), existing.target.storage_url, existing.target.study_name)
    store = open_artifact_store(folder, create=False)
    if args.host not in LOCAL_HOSTS:
        print(f"warning: binding to {args.host}: optuna-dashboard has no authentication; anyone who can reach "
              f"port {args.port} can read and change the study. Prefer an SSH tunnel to 127.0.0.1.",
              file=sys.stderr)
    shown_host = f"[{args.host}]" if ":" in args.host else args.host
    study_url = f"http://{shown_host}:{args.port}/dashboard/studies/{study_id_of(study)}"
    print(f"study {study.study_name!r}: {study_url}", flush=True)
    print(f"checkpoints: {folder if store else 'none yet (' + str(folder) + ' does not exist)'}", flush=True)
    try:
        optuna_dashboard.run_server(existing.storage, host=args.host, port=args.port, artifact_store=store)
    except OSError as err:
        return fail(exits.USAGE, f"cannot serve on {args.host}:{args.port}: {err.strerror or err}; "
                                 "pick another --port")
    except KeyboardInterrupt:
        pass
    return exits.OK


if __name__ == "__main__":
    sys.exit(main())
