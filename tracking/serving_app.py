"""The web app `tunetrack serve` runs: MLflow's own scoring server (the app `mlflow models
serve --env-manager local` runs: `/ping`, `/health`, `/version`, `/invocations`, MLflow's
request formats), with a guard in front for what a client gets wrong.

MLflow answers a bad request with HTTP 400, but its body repeats the input (all of it, for
a body that is not JSON) and, for an exception that is not an `MlflowException`, a stack
trace. The guard (`RequestGuard`, plain ASGI) keeps MLflow's status codes and turns each
error body into `{"error_code": ..., "message": <one line>}`; it refuses an empty body
and one over `max_body` bytes with 400 itself, after reading it (so the client reads the
answer instead of a reset connection) but without keeping it.

Configured by environment (uvicorn imports `create_app` in each worker): MLflow's own
model path variable, and `TUNETRACK_SERVE_MAX_BODY` (bytes).
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

MAX_BODY_ENV = "TUNETRACK_SERVE_MAX_BODY"
THREADS_ENV = "TUNETRACK_SERVE_THREADS"
MESSAGE_CHARS = 300  # an error line longer than this is cut

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def one_line(message: str) -> str:
    """MLflow's error message as one line: for a failed prediction, the model's own line
    (MLflow prefixes it with the whole input: "Failed to predict data '...'. \\nError: ");
    otherwise its first line."""
    if message.startswith("Failed to predict data") and "\nError: " in message:
        message = message.rpartition("\nError: ")[2]
    line = (message.strip().splitlines() or [""])[0].strip()
    return line if len(line) <= MESSAGE_CHARS else line[:MESSAGE_CHARS - 3] + "..."


def error_body(status: int, body: bytes) -> bytes:
    """An error response's body with one line of message and no stack trace."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        code, message = parsed.get("error_code", "BAD_REQUEST"), str(parsed.get("message", ""))
    else:
        code, message = ("BAD_REQUEST" if status < 500 else "INTERNAL_ERROR"), body.decode(
            "utf-8", "replace")
    return json.dumps({"error_code": code, "message": one_line(message)}).encode()


NPY = b"application/x-npy"  # a batch as one .npy file: what a client sends for throughput


class RequestGuard:
    """ASGI middleware: bounded, non-empty request bodies; one-line error bodies; and a
    binary door to the same model: `POST /invocations` with `Content-Type:
    application/x-npy` (one `numpy.save` array, the shapes the pyfunc takes) is answered by
    the model's own `predict` in MLflow's answer format, without MLflow's JSON parsing of
    every number (most of an array request's time: bench/README.md, Serving)."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_body: int,
                 model: Any = None):
        self.app = app
        self.max_body = max_body
        self.model = model

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body, size, more = bytearray(), 0, True
        while more:  # read it all, keep at most max_body
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= self.max_body:
                body += chunk
            more = message.get("more_body", False)
        if size > self.max_body:
            await _answer(send, 400, f"request body is {size} bytes; at most {self.max_body} "
                                     f"are accepted (tunetrack serve --max-body-mb)")
            return
        if not size:
            await _answer(send, 400, 'request body is empty; send JSON such as {"inputs": '
                                     '[...]} or {"dataframe_split": {"columns": ["image"], '
                                     '"data": [["<base64 PNG>"]]}}')
            return
        if self.model is not None and scope["path"] == "/invocations" and any(
                name == b"content-type" and value.split(b";")[0].strip() == NPY
                for name, value in scope.get("headers", [])):
            await self._npy(bytes(body), send)
            return
        await self.app(scope, _replay(bytes(body)), _one_line_errors(send))

    async def _npy(self, body: bytes, send: Send) -> None:
        """One .npy array through the model: its rows as MLflow answers, or one line."""
        import io

        import numpy as np
        from mlflow.exceptions import MlflowException

        try:
            batch = np.load(io.BytesIO(body), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            await _answer(send, 400, one_line(f"the body is not one .npy array: {exc}"))
            return
        try:
            rows = self.model.predict(batch)
        except MlflowException as exc:
            await _answer(send, 400, one_line(exc.message))
            return
        answer = json.dumps({"predictions": rows.to_dict(orient="records")}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})


def _replay(body: bytes) -> Receive:
    """A `receive` that hands the app the body already read, once."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _one_line_errors(send: Send) -> Send:
    """A `send` that rewrites the body of a 4xx/5xx response (`error_body`)."""
    start: dict[str, Any] | None = None
    chunks = bytearray()

    async def guarded(message: dict[str, Any]) -> None:
        nonlocal start
        if message["type"] == "http.response.start" and message["status"] >= 400:
            start = message
            return
        if start is None or message["type"] != "http.response.body":
            await send(message)
            return
        chunks.extend(message.get("body", b""))
        if not message.get("more_body", False):
            await _answer(send, start["status"], body=error_body(start["status"],
                                                                 bytes(chunks)))

    return guarded


async def _answer(send: Send, status: int, message: str = "", *, body: bytes | None = None
                  ) -> None:
    if body is None:
        body = json.dumps({"error_code": "BAD_REQUEST", "message": message}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app() -> RequestGuard:
    """uvicorn's factory, in each worker: load the model, build MLflow's app, guard it."""
    import torch
    from mlflow.pyfunc import scoring_server

    torch.set_num_threads(int(os.environ.get(THREADS_ENV, torch.get_num_threads())))
    model = scoring_server.load_model_with_mlflow_config(
        os.environ[scoring_server._SERVER_MODEL_PATH])
    return RequestGuard(scoring_server.init(model), int(os.environ[MAX_BODY_ENV]), model)
