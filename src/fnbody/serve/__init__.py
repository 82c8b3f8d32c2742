"""Serve a generator over HTTP: OpenAI-compatible completions, code search and a web page."""

from fnbody.serve.app import SearchIndex, ServeSettings, create_app

__all__ = ["SearchIndex", "ServeSettings", "create_app"]
