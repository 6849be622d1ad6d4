"""Minimal stand-in for ``uvicorn``, only so logging configs can name its formatters.

vLLM hands its logging dictConfig (or uvicorn's own default one) to uvicorn, and those
configs refer to ``uvicorn.logging.DefaultFormatter`` / ``AccessFormatter`` by name. The
fake runs without uvicorn installed, so it ships the two formatters (no server).
"""
