"""`tunetrack serve`: a logged or registered model behind MLflow's scoring server.

What `mlflow models serve -m URI --env-manager local` does, with tunetrack's defaults: the
model is fetched through tunetrack's store resolution (`--tracking-uri`, so
`models:/NAME@champion` means the study's store, not MLflow's global default), the server
binds 127.0.0.1, one worker uses every core for torch (N workers share them), and the app
is MLflow's own behind `serving_app.RequestGuard` (one-line 400s, a body size limit).
The model's pyfunc (`registry.pyfunc_classifier`) does the rest.
"""

from __future__ import annotations

import os
import socket
import sys

from tunetrack.models import TunetrackError

DEFAULT_PORT = 5002
DEFAULT_MAX_BODY_MB = 16.0


def curl_line(host: str, port: int) -> str:
    """A ready-to-paste request: one image file, base64 in MLflow's `dataframe_split`."""
    url_host = f"[{host}]" if ":" in host else host
    return (f"curl -s http://{url_host}:{port}/invocations -H 'Content-Type: "
            f"application/json' -d \"{{\\\"dataframe_split\\\": {{\\\"columns\\\": "
            f"[\\\"image\\\"], \\\"data\\\": [[\\\"$(base64 -w0 IMAGE.png)\\\"]]}}}}\"")


def _check_port(host: str, port: int) -> None:
    """One clear line now rather than uvicorn's traceback after the model has loaded."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise TunetrackError(f"cannot listen on {host}:{port} ({exc.strerror}); choose "
                                 f"another --port or --host") from None


def serve(model_uri: str, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          workers: int = 1, max_body_mb: float = DEFAULT_MAX_BODY_MB,
          tracking_uri: str | None = None) -> None:
    """Serve `model_uri` until interrupted (Ctrl-C / SIGTERM)."""
    import uvicorn
    from mlflow.pyfunc import scoring_server

    from .registry import check_classifier, local_model
    from .store import is_loopback, open_client

    if workers < 1 or not max_body_mb > 0:  # also NaN
        raise TunetrackError(f"workers must be >= 1 and max_body_mb > 0, got {workers} and "
                             f"{max_body_mb}")
    _check_port(host, port)
    _, client = open_client(tracking_uri, check=model_uri.startswith(("models:/", "runs:/")))
    with local_model(model_uri, client) as local:
        check_classifier(local, model_uri)
        from .serving_app import MAX_BODY_ENV, THREADS_ENV

        os.environ[scoring_server._SERVER_MODEL_PATH] = str(local)
        os.environ[MAX_BODY_ENV] = str(int(max_body_mb * 2**20))
        os.environ[THREADS_ENV] = str(max(1, (os.cpu_count() or 1) // workers))
        if not is_loopback(host):
            print(f"warning: serving on {host} without authentication", file=sys.stderr)
        print(f"serving {model_uri} on http://{host}:{port} (POST /invocations, GET /ping); "
              f"classify an image with:\n  {curl_line(host, port)}", flush=True)
        uvicorn.run("tunetrack.tracking.serving_app:create_app", factory=True, host=host,
                    port=port, workers=workers, log_level="warning")
