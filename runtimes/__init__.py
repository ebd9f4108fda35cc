"""Execution of edgernn files: streaming sessions over onnxruntime, many streams through one
session, execution providers, and benchmarks against the baselines a user would write."""

from edgernn.runtimes.batcher import StreamBatcher
from edgernn.runtimes.providers import ProviderError
from edgernn.runtimes.session import StreamError, StreamingSession, session_options
from edgernn.runtimes.tree import ForestError, TreeSession, validate_forest

__all__ = ["StreamingSession", "StreamError", "StreamBatcher", "ProviderError", "session_options", "TreeSession",
           "ForestError", "validate_forest"]
