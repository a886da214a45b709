"""`llamacpu serve`: an OpenAI-compatible HTTP server (Starlette on uvicorn; `pip install 'llamacpu[server]'`).

    GET  /health                 {"status": "ok", "slots": 8, "slots_free": 8, "waiting": 0, ...}
    GET  /v1/models
    POST /v1/completions         OpenAI's body; "stream": true gives server-sent events ending "data: [DONE]"
    POST /v1/chat/completions    the model's chat template; response_format json_object / json_schema
    POST /v1/embeddings          mean-pooled, L2-normalized final hidden states

Every request goes to the model's one `Engine` (continuous batching). Errors have OpenAI's body,
{"error": {"message", "type", "param", "code"}}: 400 bad values or a prompt over the context, 401 a
missing or wrong API key, 404 an unknown model or path, 413 a body over the limit, 429 every slot and
queue place taken. A client that disconnects mid-stream cancels its sequences, which frees their slots.
"""
from __future__ import annotations

import asyncio
import hmac
import logging

from ..errors import InputError, LlamacpuError, UnsupportedError
from ..limits import MAX_JSON_DEPTH, loads_json
from .engine import EngineBusy, EngineClosed
from .openai_api import ModelNotFound, ParamError, Service, dumps

log = logging.getLogger("llamacpu.serve")
MAX_BODY = 4 << 20  # bytes of a request body
MAX_DEPTH = MAX_JSON_DEPTH  # nesting of a request body (a JSON schema in response_format nests ~10 levels)


class BodyTooLarge(InputError):
    """The request body is over the server's limit (HTTP 413)."""


def _deps():
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UnsupportedError("llamacpu serve needs the server extra: pip install 'llamacpu[server]'") from None


def create_app(service: Service, api_key: str | None = None, max_body: int = MAX_BODY, max_depth: int = MAX_DEPTH):
    """The ASGI app serving `service`; `api_key` requires `Authorization: Bearer <key>` on /v1/*.
    Request bodies are bounded: at most `max_body` bytes (413) and `max_depth` levels of nesting (400),
    checked before anything reads the values (llamacpu.limits, as for files)."""
    _deps()
    import anyio
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    def error(status: int, message: str, type_: str, param=None, code=None) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}},
                            status_code=status)

    def refusal(e: Exception) -> JSONResponse:
        """One of our exceptions -> its HTTP status and OpenAI error body."""
        if isinstance(e, BodyTooLarge):
            return error(413, str(e), "invalid_request_error")
        if isinstance(e, ModelNotFound):
            return error(404, str(e), "invalid_request_error", "model", "model_not_found")
        if isinstance(e, ParamError):
            return error(400, str(e), "invalid_request_error", e.param)
        if isinstance(e, (InputError, UnsupportedError)):
            return error(400, str(e), "invalid_request_error")
        if isinstance(e, EngineBusy):
            return error(429, str(e), "rate_limit_error", None, "server_busy")
        if isinstance(e, EngineClosed):
            return error(503, str(e), "server_error", None, "shutting_down")
        log.exception("request failed")
        return error(500, f"internal error: {type(e).__name__}: {e}", "server_error")

    def guarded(handler):
        async def endpoint(request):
            if api_key is not None and request.url.path.startswith("/v1/"):
                given = request.headers.get("authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                    return error(401, "Incorrect or missing API key (Authorization: Bearer ...)",
                                 "invalid_request_error", None, "invalid_api_key")
            try:
                return await handler(request)
            except Exception as e:  # nothing a request does may crash the server
                return refusal(e)

        return endpoint

    async def read_json(request) -> dict:
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > max_body):
            raise BodyTooLarge(f"request body over {max_body} bytes")
        raw = bytearray()
        async for part in request.stream():
            raw += part
            if len(raw) > max_body:
                raise BodyTooLarge(f"request body over {max_body} bytes")
        try:  # invalid JSON, or nested deeper than max_depth: 400 (json's C parser recurses per level)
            body = loads_json(bytes(raw), "request body", lambda m: ParamError("body", m), max_depth)
        except ParamError:
            raise
        except ValueError as e:  # what loads_json leaves: e.g. an integer of more than 4300 digits
            raise ParamError("body", f"invalid JSON ({e})") from None
        if not isinstance(body, dict):
            raise ParamError("body", "expected a JSON object")
        return body

    async def health(request):
        return JSONResponse({"status": "ok", "model": service.name, **service.engine.stats()})

    async def models(request):
        return JSONResponse(service.models())

    def generation(kind):
        async def handler(request):
            body, loop = await read_json(request), asyncio.get_running_loop()
            # tokenizing, the chat template and a schema's grammar are CPU work: off the event loop
            job = await anyio.to_thread.run_sync(lambda: service.start(kind, body, loop=loop))
            if not job.stream:
                try:
                    return JSONResponse(await job.aresponse())
                finally:
                    job.cancel()

            async def events():
                try:
                    async for chunk in job.achunks():
                        yield f"data: {dumps(chunk)}\n\n"
                except RuntimeError as e:  # the engine failed this request mid-stream
                    yield f"data: {dumps({'error': {'message': str(e), 'type': 'server_error'}})}\n\n"
                finally:
                    job.cancel()  # a disconnected client lands here (the stream task is cancelled)
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

        return handler

    async def embeddings(request):
        body = await read_json(request)
        inp, model = body.pop("input", None), body.pop("model", None)
        result = await anyio.to_thread.run_sync(lambda: service.create_embedding(inp, model=model, **body))
        return JSONResponse(result)

    async def http_error(request, exc):
        kind = "not_found" if exc.status_code == 404 else None
        return error(exc.status_code, str(exc.detail), "invalid_request_error", None, kind)

    routes = [Route("/health", guarded(health), methods=["GET"]),
              Route("/v1/models", guarded(models), methods=["GET"]),
              Route("/v1/completions", guarded(generation("completion")), methods=["POST"]),
              Route("/v1/chat/completions", guarded(generation("chat.completion")), methods=["POST"]),
              Route("/v1/embeddings", guarded(embeddings), methods=["POST"])]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})

    return app


def serve(service: Service, host: str = "127.0.0.1", port: int = 8080, api_key: str | None = None,
          log_level: str = "info") -> None:
    """Run the server until interrupted (blocking)."""
    _deps()
    import uvicorn

    app = create_app(service, api_key=api_key)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
    finally:
        service.close()
