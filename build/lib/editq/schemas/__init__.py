"""Pydantic models shared by the producer, the worker and the sandbox."""
