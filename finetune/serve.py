"""An OpenAI-compatible server for trained runs: ``python -m finetune.serve RUN [--host 127.0.0.1 --port 8000]``.

``GET /v1/models`` and ``POST /v1/chat/completions`` (streamed or not; ``max_tokens``, ``temperature``, ``top_p``,
``stop``, ``tools``), so tools that speak the OpenAI API (the ``openai`` client, LangChain, editors) call a run as
they call a hosted model. Every answer is generated from the prompt the run was trained on: the run's saved
template renders the messages (not whatever template the tokenizer ships), and it stops at that template's
end-of-turn tokens. The web app (``python -m finetune.ui``) serves the same router over every finished run.

Sampling: without ``temperature`` (or with 0) the answer is greedy, as ``finetune.chat`` answers; a positive
temperature samples, with ``top_p`` when given. FastAPI + uvicorn: a small ASGI app that starts in well under a
second and streams server-sent events, as OpenAI's streaming does.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

from pydantic import BaseModel, ConfigDict

from .errors import UsageError, UserError, add_verbose_flag, guarded

__all__ = ["ChatRequest", "RunPool", "Served", "complete", "events", "create_app", "openai_router", "request_guard",
           "require_web", "main"]

logger = logging.getLogger(__name__)
DEFAULT_MAX_TOKENS = 256


def require_web() -> None:
    """FastAPI and uvicorn come with the ``ui`` extra (training needs neither): say so in one line."""
    import importlib.util

    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(f"{' and '.join(missing)} missing: the server and the web app need the ui extra; "
                         "pip install -e '.[ui]' (make install installs it).")


class ChatRequest(BaseModel):
    """The fields of OpenAI's chat-completions request that a local run can honour (others are ignored)."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[dict]
    max_tokens: Optional[int] = None
    max_completion_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    stop: Optional[Union[str, list[str]]] = None
    stream: bool = False
    stream_options: Optional[dict] = None
    n: int = 1
    tools: Optional[list[dict]] = None


class APIError(Exception):
    """A request the server cannot answer: OpenAI's error body with this status."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.param, self.kind = status, param, kind

    def response(self):
        from fastapi.responses import JSONResponse

        return JSONResponse({"error": {"message": str(self), "type": self.kind, "param": self.param, "code": None}},
                            status_code=self.status)


class Served:
    """One loaded run and how it answers: its template renders the prompt, one generation at a time."""

    def __init__(self, run_dir: Path):
        from .data.tokenize import Encoder
        from .inference import load_run
        from .methods.ptuning import PrefixModel

        self.run = load_run(run_dir)
        self.encoder = Encoder(self.run.tokenizer, self.run.template, max_length=10**9)
        # A P-Tuning PrefixModel decodes in its own loop, which takes no streamer: its answer comes as one chunk.
        self.streams = not isinstance(self.run.model, PrefixModel)
        self.lock = threading.Lock()

    def settings(self, request: ChatRequest) -> dict:
        from .evaluation.generation import generation_settings

        max_tokens = request.max_completion_tokens or request.max_tokens or DEFAULT_MAX_TOKENS
        sampling = {}
        if request.temperature:
            sampling = {"do_sample": True, "temperature": request.temperature}
            if request.top_p is not None:
                sampling["top_p"] = request.top_p
        kwargs = generation_settings(self.run.tokenizer, self.encoder, max_tokens, **sampling)
        if request.stop and self.streams:  # end as soon as a stop string appears (the text is cut there below)
            kwargs.update(stop_strings=_stops(request.stop), tokenizer=self.run.tokenizer)
        return kwargs

    def prompt(self, request: ChatRequest) -> list[int]:
        messages = [{**m, "content": _text(m.get("content"))} for m in request.messages]
        if not messages or messages[-1].get("role") not in ("user", "tool"):
            raise APIError(400, "messages must end with a user (or tool) message for the model to answer.",
                           "messages")
        try:
            return self.encoder.encode_prompt(messages, request.tools)
        except Exception as err:  # noqa: BLE001 - the template refusing these messages is the caller's to fix
            raise APIError(400, f"the run's template cannot render these messages: {err}", "messages") from None

    def generate(self, request: ChatRequest, ids: list[int], settings: dict, streamer=None):
        """The new token ids (``generate`` in this thread; the caller streams from ``streamer`` meanwhile)."""
        import torch

        model = self.run.model
        device = next(model.parameters()).device
        input_ids = torch.tensor([ids], device=device)
        output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                **settings, **({"streamer": streamer} if streamer is not None else {}))
        new = output[0, len(ids):].tolist()
        pad = self.run.tokenizer.pad_token_id
        while new and new[-1] == pad and pad not in (self.encoder.stop_ids or []):
            new.pop()
        return new

    def finish_reason(self, new: list[int], max_tokens: int, stopped: bool) -> str:
        ended = bool(new) and new[-1] in (self.encoder.stop_ids or [self.run.tokenizer.eos_token_id])
        return "stop" if stopped or ended or len(new) < max_tokens else "length"


class RunPool:
    """The runs a server answers for, by model id, loaded on first use; one stays in memory at a time.

    Args:
        discover: returns ``{model id: run folder}`` (called on every request, so new runs appear).
    """

    def __init__(self, discover: Callable[[], dict[str, Path]]):
        self.discover, self._loaded, self._lock = discover, {}, threading.Lock()

    @classmethod
    def of_run(cls, run_dir: str | Path, name: Optional[str] = None) -> "RunPool":
        run_dir = Path(run_dir)
        for needed in ("recipe.json", "template.json"):
            if not (run_dir / needed).exists():
                raise UsageError(f"{run_dir} has no {needed}: not a finished finetune run folder; give one written "
                                 "by python -m finetune.run (runs/<name>-<time>).")
        return cls(lambda: {name or run_dir.name: run_dir})

    def get(self, model: str) -> Served:
        runs = self.discover()
        if model not in runs:
            raise APIError(404, f"The model {model!r} does not exist; known: {', '.join(sorted(runs)) or 'none'}.",
                           "model", "not_found_error")
        with self._lock:
            if model not in self._loaded:
                self._loaded.clear()  # one model in memory: a CPU or a single GPU holds one comfortably
                logger.info("Loading %s from %s", model, runs[model])
                self._loaded[model] = Served(runs[model])
            return self._loaded[model]


def openai_router(pool: RunPool):
    """``/v1/models`` and ``/v1/chat/completions`` over ``pool`` (a FastAPI ``APIRouter``)."""
    from fastapi import APIRouter

    router = APIRouter(prefix="/v1")

    @router.get("/models")
    def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": int(path.stat().st_mtime),
                                            "owned_by": "finetune"} for name, path in sorted(pool.discover().items())]}

    @router.post("/chat/completions")
    def chat_completions(request: ChatRequest):
        try:
            return complete(pool, request)
        except APIError as err:
            return err.response()
        except UserError as err:  # the run cannot be loaded (a damaged file): its one-line message
            return APIError(400, str(err), "model").response()

    return router


def complete(pool: RunPool, request: ChatRequest):
    """Answer ``request``: OpenAI's ``chat.completion`` body, or a streaming response of :func:`events`."""
    if request.n != 1:
        raise APIError(400, "n must be 1: one answer per request.", "n")
    served = pool.get(request.model)
    ids = served.prompt(request)
    settings = served.settings(request)
    meta = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": request.model}
    if request.stream:
        from fastapi.responses import StreamingResponse

        return StreamingResponse(events(served, request, ids, settings, meta), media_type="text/event-stream")
    with served.lock:
        new = served.generate(request, ids, settings)
    text = served.run.tokenizer.decode(new, skip_special_tokens=True).strip()
    text, stopped = _cut(text, _stops(request.stop))
    return {**meta, "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": served.finish_reason(new, settings["max_new_tokens"], stopped)}],
            "usage": _usage(ids, new)}


def events(served: Served, request: ChatRequest, ids: list[int], settings: dict, meta: dict) -> Iterator[str]:
    """Server-sent events as OpenAI streams them: a role chunk, content chunks, the finish reason, ``[DONE]``."""
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    class _Cancelled(StoppingCriteria):
        def __init__(self, event: threading.Event):
            self.event = event

        def __call__(self, input_ids, scores, **kwargs):
            return self.event.is_set()

    def chunk(delta: dict, finish: Optional[str] = None, **extra) -> str:
        body = {**meta, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    with served.lock:
        yield chunk({"role": "assistant", "content": ""})
        result: dict = {}
        cancel = threading.Event()
        if served.streams:
            streamer = TextIteratorStreamer(served.run.tokenizer, skip_prompt=True, skip_special_tokens=True)
            settings = {**settings, "stopping_criteria": StoppingCriteriaList([_Cancelled(cancel)])}

            def work():
                try:
                    result["new"] = served.generate(request, ids, settings, streamer)
                except BaseException as err:  # noqa: BLE001 - reported below, after the streamer is released
                    result["error"] = err
                    streamer.end()

            thread = threading.Thread(target=work, daemon=True)
            thread.start()
            pieces: Iterator[str] = streamer
        else:
            result["new"] = served.generate(request, ids, settings)
            thread, pieces = None, iter([served.run.tokenizer.decode(result["new"], skip_special_tokens=True)])
        stopped = False
        try:
            for text, stopped in _until_stop(pieces, _stops(request.stop)):
                if text:
                    yield chunk({"content": text})
        finally:  # the caller went away, or a stop string ended the text: end the generation too
            cancel.set()
            if thread is not None:
                thread.join()
        if "error" in result:
            raise result["error"]
        new = result["new"]
        yield chunk({}, served.finish_reason(new, settings["max_new_tokens"], stopped))
        if (request.stream_options or {}).get("include_usage"):
            usage = {**meta, "object": "chat.completion.chunk", "choices": [], "usage": _usage(ids, new)}
            yield f"data: {json.dumps(usage)}\n\n"
        yield "data: [DONE]\n\n"


def _until_stop(pieces: Iterator[str], stops: list[str]) -> Iterator[tuple[str, bool]]:
    """The streamed text as the non-streamed answer reads: stripped at both ends and cut before the first stop
    string. Text that may still turn out to start a stop string, or trailing space, is held back until it cannot."""
    held, started = "", False
    for piece in pieces:
        held += piece
        if not started:
            held = held.lstrip()
            started = bool(held)
        cut = _first_stop(held, stops)
        if cut >= 0:
            yield held[:cut].rstrip(), True
            return
        keep = max((n for s in stops for n in range(len(s) - 1, 0, -1) if held.endswith(s[:n])), default=0)
        keep = max(keep, len(held) - len(held.rstrip()))
        yield held[:len(held) - keep], False
        held = held[len(held) - keep:]
    yield held.rstrip(), False


def _first_stop(text: str, stops: list[str]) -> int:
    """Where the first stop string in ``text`` begins, or -1."""
    return min((text.find(s) for s in stops if s in text), default=-1)


def _cut(text: str, stops: list[str]) -> tuple[str, bool]:
    cut = _first_stop(text, stops)
    return (text[:cut].rstrip(), True) if cut >= 0 else (text, False)


def _stops(stop: Union[str, list[str], None]) -> list[str]:
    return [s for s in ([stop] if isinstance(stop, str) else stop or []) if s]


def _text(content) -> str:
    """A message's content as text: OpenAI allows a list of parts; the text parts are joined."""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


def _usage(ids: list[int], new: list[int]) -> dict:
    return {"prompt_tokens": len(ids), "completion_tokens": len(new), "total_tokens": len(ids) + len(new)}


def request_guard(app, token: Optional[str], hosts: set[str], public: tuple[str, ...] = ()) -> None:
    """Refuse what a page on another site could make a browser send here, and callers without the token.

    - ``Host`` must be one this server was started for (a DNS-rebinding page reaches 127.0.0.1 under its own name);
    - a request that changes something (not GET/HEAD) from another origin is refused (``Origin`` /
      ``Sec-Fetch-Site``), so no web page can launch runs or spend the machine on generation;
    - with a token, every request but ``public`` paths carries it (``Authorization: Bearer``, ``X-Finetune-Token``
      or, for the page itself, ``?token=``).
    """

    @app.middleware("http")
    async def guard(request, call_next):
        host = (request.headers.get("host") or "").rsplit(":", 1)[0].strip("[]")
        if host not in hosts:
            return _refused(f"host {host!r} is not this server's ({', '.join(sorted(hosts))})")
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            origin = request.headers.get("origin")
            site = request.headers.get("sec-fetch-site")
            if (origin and origin.split("://", 1)[-1] != request.headers.get("host")) or site == "cross-site":
                return _refused("requests from another origin are refused")
        if token and not request.url.path.startswith(public):
            given = (request.headers.get("x-finetune-token") or request.query_params.get("token")
                     or request.headers.get("authorization", "").removeprefix("Bearer ").strip())
            if given != token:
                return _refused("a valid token is required (start the server with --token and pass it)", 401)
        return await call_next(request)


def _refused(message: str, status: int = 403):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": "permission_error", "param": None, "code": None}},
                        status_code=status)


def allowed_hosts(host: str) -> set[str]:
    """The ``Host`` names a server bound to ``host`` answers to."""
    names = {"127.0.0.1", "localhost", "::1"}
    return names if is_loopback(host) else names | {host}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: Optional[str]) -> None:
    """Binding beyond this machine needs a token: anyone on the network could otherwise use it."""
    if not is_loopback(host) and not token:
        raise UsageError(f"--host {host} makes the server reachable from other machines; give --token SECRET too "
                         "(callers send it as the API key), or keep the default 127.0.0.1.")


def create_app(pool: RunPool, token: Optional[str] = None, host: str = "127.0.0.1"):
    """The OpenAI-compatible app (FastAPI) over ``pool``."""
    from fastapi import FastAPI

    app = FastAPI(title="finetune serve", docs_url=None, redoc_url=None)
    app.include_router(openai_router(pool))
    request_guard(app, token, allowed_hosts(host))
    return app


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run folder written by python -m finetune.run")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--name", help="the model id callers use (default: the run folder's name)")
    parser.add_argument("--token", help="API key callers must send (required with a --host other than loopback)")
    add_verbose_flag(parser)
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    def serve() -> int:
        require_web()
        import uvicorn

        check_exposure(args.host, args.token)
        pool = RunPool.of_run(args.run_dir, args.name)
        name = next(iter(pool.discover()))
        pool.get(name)  # load now: a broken run fails here, with its one-line message, not on the first request
        print(f"Serving {args.run_dir} as model {name!r} at http://{args.host}:{args.port}/v1", flush=True)
        uvicorn.run(create_app(pool, args.token, args.host), host=args.host, port=args.port, log_level="warning")
        return 0

    return guarded(serve, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
