"""Execution of edgernn files: streaming sessions over onnxruntime."""

from edgernn.runtimes.session import StreamError, StreamingSession, session_options
from edgernn.runtimes.tree import ForestError, TreeSession, validate_forest

__all__ = ["StreamingSession", "StreamError", "session_options", "TreeSession", "ForestError", "validate_forest"]
