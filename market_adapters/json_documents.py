"""JSON documents from outside: decoded once, with errors that say where."""

from __future__ import annotations

import json
from typing import Any

from market_adapters.errors import AdapterFormatError


def loads_json(payload: bytes, source: str) -> Any:
    """Decode a JSON document, naming the file and the position of what is wrong."""
    try:
        return json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise AdapterFormatError(source, "file", "", f"is not UTF-8 text: {error}") from error
    except json.JSONDecodeError as error:
        raise AdapterFormatError(
            source, "document", "", f"is not JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from error
