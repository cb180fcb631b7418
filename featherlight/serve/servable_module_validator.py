"""``ServableModuleValidator``: serve the model over HTTP when training starts and check one request's answer.

Lightning starts a FastAPI/uvicorn server in a second process for this; featherlight serves from a thread of the
training process with the standard library's HTTP server (no extra package), the module in eval mode without
gradients for the length of the check, its training mode restored after.
"""
from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, Optional

import torch

from featherlight.callbacks.callback import Callback
from featherlight.serve.servable_module import ServableModule
from featherlight.utilities.exceptions import MisconfigurationException
from featherlight.utilities.model_helpers import is_overridden
from featherlight.utilities.rank_zero import rank_zero_only

_logger = logging.getLogger(__name__)


class _Response:
    """What the check's request got back (``requests.Response``'s ``status_code``, ``text`` and ``json()``)."""

    def __init__(self, status_code: int, text: str) -> None:
        self.status_code, self.text = status_code, text

    def json(self) -> Any:
        return json.loads(self.text)

    def __bool__(self) -> bool:  # as requests' Response: true for a successful status
        return self.status_code < 400


class ServableModuleValidator(Callback):
    """At ``on_train_start`` (global rank zero), serve the :class:`ServableModule` being trained, send it
    ``configure_payload()`` and compare the answer with ``configure_response()``.

    Args:
        optimization: a serving optimization (``"trace"``, ``"script"``, ``"onnx"``, ``"tensorrt"``): none is
            supported yet, as in Lightning.
        server: ``"fastapi"`` (Lightning's default name; featherlight serves with the standard library either way).
        host: the address to serve on.
        port: the port to serve on; when it is taken, a free one is used.
        timeout: seconds to wait for the answer.
        exit_on_failure: raise when the model could not be served (else only ``successful`` is False).

    Raises:
        TypeError: the module is not a ``ServableModule``.
        MisconfigurationException: the payload has no ``"body"``, or (``exit_on_failure``) the request failed.
        RuntimeError: the answer differs from ``configure_response()``.
    """

    def __init__(
        self,
        optimization: Optional[Literal["trace", "script", "onnx", "tensorrt"]] = None,
        server: Literal["fastapi", "ml_server", "torchserve", "sagemaker"] = "fastapi",
        host: str = "127.0.0.1",
        port: int = 8080,
        timeout: int = 20,
        exit_on_failure: bool = True,
    ) -> None:
        super().__init__()
        if optimization is not None:
            raise NotImplementedError(f"The optimization {optimization!r} is not supported: pass `optimization=None`.")
        if server != "fastapi":
            raise NotImplementedError(f"The server {server!r} is not supported: pass `server='fastapi'` (the default).")
        self.optimization = optimization
        self.server = server
        self.host = host
        self.port = port
        self.timeout = timeout
        self.exit_on_failure = exit_on_failure
        self.resp: Optional[_Response] = None

    @property
    def successful(self) -> Optional[bool]:
        """Whether the served model answered the check's request (None before the check ran)."""
        return self.resp.status_code == 200 if self.resp is not None else None

    def state_dict(self) -> dict[str, Any]:
        return {"successful": self.successful, "optimization": self.optimization, "server": self.server}

    @rank_zero_only
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.strategy.strategy_name == "fsdp":
            raise MisconfigurationException(
                "`ServableModuleValidator` cannot serve a sharded (FSDP) model: use it with a single-device or DDP run.")
        if not isinstance(pl_module, ServableModule):
            raise TypeError(
                f"The provided model should be subclass of {ServableModule.__qualname__}: declare "
                f"`class {type(pl_module).__name__}(LightningModule, ServableModule)` and implement "
                "`configure_payload`, `configure_serialization`, `serve_step` and `configure_response`.")
        payload = pl_module.configure_payload()
        if not isinstance(payload, dict) or "body" not in payload:
            raise MisconfigurationException(
                f'Your provided payload {payload} should have a field named "body": '
                '`configure_payload` returns `{"body": {<input name>: <value>, ...}}`.')
        deserializers, serializers = pl_module.configure_serialization()
        server = _serve(pl_module, deserializers, serializers, self.host, self.port)
        try:
            self.resp = _post(f"http://{self.host}:{server.server_address[1]}/serve", payload, self.timeout)
        finally:
            server.shutdown()
            server.server_close()

        if self.successful and is_overridden("configure_response", pl_module, ServableModule):
            expected, got = pl_module.configure_response(), self.resp.json()
            if got != expected:
                raise RuntimeError(f"The expected response {expected} doesn't match the generated one {got}.")
        if self.exit_on_failure and not self.successful:
            raise MisconfigurationException(
                f"The model isn't servable: the request answered {self.resp.status_code}: {self.resp.text}")
        if self.successful:
            _logger.info(f"Your model is servable and the received payload was {self.resp.json()}.")


def _serve(module: Any, deserializers: dict, serializers: dict, host: str, port: int) -> ThreadingHTTPServer:
    """A server on ``host:port`` (or a free port when that one is taken) answering ``POST /serve`` with the module's
    serialized ``serve_step`` output, and ``GET /ping``; it runs on a daemon thread until ``shutdown()``."""
    lock = threading.Lock()  # one request at a time touches the module

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self._reply(200, True) if self.path == "/ping" else self._reply(404, {"detail": "Not Found"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/serve":
                return self._reply(404, {"detail": "Not Found"})
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))["body"]
                for key, deserialize in deserializers.items():
                    body[key] = deserialize(body[key])
                with lock:
                    output = _serve_step(module, body)
                if not isinstance(output, dict):
                    raise TypeError(f"`serve_step` must return a dict of outputs, got {type(output).__name__}.")
                self._reply(200, {k: serializers[k](v) if k in serializers else v for k, v in output.items()})
            except Exception as err:  # the check reports it; the training process goes on
                self._reply(500, {"detail": f"{type(err).__name__}: {err}"})

        def log_message(self, *args: Any) -> None:  # no request lines on stderr
            pass

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError:  # the port is taken
        server = ThreadingHTTPServer((host, 0), Handler)
    threading.Thread(target=server.serve_forever, name="featherlight-serve-check", daemon=True).start()
    return server


def _serve_step(module: Any, body: dict) -> Any:
    """``serve_step`` in eval mode without gradients; each submodule's training flag restored after."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            return module.serve_step(**body)
    finally:
        for m, training in modes:
            m.training = training


def _post(url: str, payload: Any, timeout: float) -> _Response:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return _Response(answer.status, answer.read().decode())
    except urllib.error.HTTPError as err:
        return _Response(err.code, err.read().decode())
