"""``python -m langfuse_dq``: the same as the ``langfuse-dq`` command."""

from .cli import main

main()
