"""langfuse-dq: a crash-safe, multi-process disk queue client for Langfuse."""

__version__ = "0.1.0"
