"""``make mlflow-ui``: the MLflow UI on the embedded store, announced only once it answers.

``mlflow ui`` prints that it is running while its server is still starting (26 s here once, on a
fresh store that first runs its migrations). This job starts it, sends its own log to a file,
polls its ``/health`` route, and prints one line with the address once a browser would get a
page, or the end of that log and a non-zero exit if it never does.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Sequence

from galeno import paths
from galeno.tracking import embedded_uri


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlflow_ui.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the UI to answer")
    args = parser.parse_args(argv)

    with socket.socket() as probe:  # another server's /health would pass for ours
        try:
            probe.bind((args.host, args.port))
        except OSError as err:
            print(f"mlflow_ui.py: error: port {args.port} is in use on {args.host} ({err.strerror}): "
                  f"stop what holds it, or pick another with --port (make mlflow-ui MLFLOW_PORT=5001)",
                  file=sys.stderr, flush=True)
            return 1
    artifacts = paths.mlflow_artifacts().resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    log_path = paths.mlflow_ui_log().resolve()
    exe = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    command = [exe] if exe else [sys.executable, "-m", "mlflow"]
    command += ["ui", "--host", args.host, "--port", str(args.port),
                "--backend-store-uri", embedded_uri(), "--default-artifact-root", artifacts.as_uri()]
    url = f"http://{args.host}:{args.port}"
    print(f"starting the MLflow UI on {paths.mlflow_db().resolve()} (its log: {log_path}) ...", flush=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + args.timeout
        try:
            while not _answers(f"{url}/health"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    why = (f"exited with status {proc.returncode}" if proc.returncode is not None
                           else f"did not answer within {args.timeout:.0f} s")
                    proc.terminate()
                    proc.wait()
                    log.flush()
                    tail = log_path.read_text(errors="replace").splitlines()[-15:]
                    print(f"mlflow_ui.py: error: the MLflow UI {why}; the end of {log_path}:", *tail,
                          sep="\n", file=sys.stderr, flush=True)
                    return 1
                time.sleep(0.5)
            print(f"MLflow UI ready at {url} (Ctrl-C stops it)", flush=True)
            return proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            return 0


if __name__ == "__main__":
    sys.exit(main())
