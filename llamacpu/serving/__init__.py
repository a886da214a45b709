"""Serving many callers on one model: the generation engine (continuous batching over KV-cache slots),
OpenAI-shaped responses for in-process use, and the HTTP server (`llamacpu serve`, extra `[server]`)."""
from .engine import Engine, EngineBusy, EngineClosed, Event, Request

__all__ = ["Engine", "EngineBusy", "EngineClosed", "Event", "Request"]
