"""``JSONEncoder.encode`` without its per-call setup, for the many small values of a drain.

``json.JSONEncoder.encode`` (and ``json.dumps``) builds a new C encoder at every call; for a
small object that costs about as much as the encoding itself. :func:`fast_encode` builds it
once and returns a function that gives exactly what ``encoder.encode`` gives (the same text,
and for a value it cannot encode, the same exception, by handing the value back to
``encoder.encode``).
"""

from __future__ import annotations

import json
import json.encoder
from typing import Any, Callable

#: the C encoder's constructor (None without the ``_json`` accelerator)
_c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)


def fast_encode(encoder: json.JSONEncoder) -> Callable[[Any], str]:
    """A faster ``encoder.encode`` for an encoder without ``indent``."""
    indent: Any = encoder.indent  # None when compact (typeshed says int | str)
    if _c_make_encoder is None or indent is not None:
        return encoder.encode
    markers: dict[int, Any] = {}
    c_encode = _c_make_encoder(
        markers if encoder.check_circular else None,
        encoder.default,
        json.encoder.encode_basestring_ascii
        if encoder.ensure_ascii
        else json.encoder.encode_basestring,
        None,
        encoder.key_separator,
        encoder.item_separator,
        encoder.sort_keys,
        encoder.skipkeys,
        encoder.allow_nan,
    )
    slow = encoder.encode

    def encode(value: Any) -> str:
        try:
            return "".join(c_encode(value, 0))
        except (TypeError, ValueError, RecursionError, OverflowError):
            markers.clear()  # an encoding stopped halfway leaves its containers marked
            return slow(value)  # the same text, or the same exception

    return encode
