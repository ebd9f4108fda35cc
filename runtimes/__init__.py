"""Execution of edgernn files: streaming sessions over onnxruntime."""

from edgernn.runtimes.session import StreamError, StreamingSession, session_options

__all__ = ["StreamingSession", "StreamError", "session_options"]
