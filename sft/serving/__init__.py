"""Serving a trained run: export (merge), terminal chat, the OpenAI-compatible server and client."""
