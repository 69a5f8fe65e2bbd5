"""langfuse-dq: a crash-safe, multi-process disk queue client for Langfuse.

Every event is on disk when the call that made it returns; a flusher process delivers it to
Langfuse (OTLP for traces, the ingestion API for scores), retrying until the server takes it
or quarantining what it refuses. See the README for the guarantees and their limits.
"""

__version__ = "0.1.0"

from .client import Langfuse, get_client
from .context import as_current
from .decorators import observe
from .fields import Usage
from .observations import Event, Generation, Score, Span, Trace

__all__ = [
    "Event",
    "Generation",
    "Langfuse",
    "Score",
    "Span",
    "Trace",
    "Usage",
    "__version__",
    "as_current",
    "get_client",
    "observe",
]
