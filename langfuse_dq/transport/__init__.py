"""Getting batches to Langfuse: HTTP with retry classification, OTLP spans, ingestion events.

The transport knows nothing of the disk: it turns ready items into requests and tells the
flusher what the server answered.
"""
