"""Records of one format into conversations, with the recipe's column names (``data.columns``), system prompt and
tool schemas applied: what every reader (training's workers, ``read_examples``, the data tools) runs per record."""
from __future__ import annotations

from collections import Counter
from typing import Iterator, Mapping

from .errors import DataError
from .formats import get_format, record_tools, skip_reason

__all__ = ["RecordConverter"]


class RecordConverter:
    """Turns records of one format (with the recipe's column names and system prompt) into conversations."""

    def __init__(self, fmt: str, prompt_column: str = "content", response_column: str = "summary",
                 text_column: str = "text", system: str | None = None, columns: Mapping[str, str] | None = None,
                 tools: str | None = None):
        self.fmt, self.system, self.columns = fmt, system, dict(columns or {})
        self.tools = tools
        """Tool schemas (JSON text) for records without their own ``tools`` (``data.tools``)."""
        self.format = get_format(fmt)
        options = {"prompt_column": prompt_column, "response_column": response_column, "text_column": text_column}
        self.named = {name: options[option] for name, option in self.format.named_by.items()}
        """The record keys of the format's fields that ``data`` options name (adgen's prompt and answer)."""
        self.text_fields, self.other_fields = self._keys(self.format.text_fields), self._keys(self.format.other_fields)
        self.required = self.text_fields if self.format.required is None else self._keys(self.format.required)
        known = self.text_fields + self.other_fields
        for name in self.columns:
            if name not in known:
                raise DataError(f"data.columns: {name!r} is not a field of data.format={fmt!r} (fields: "
                                f"{', '.join(known)}).")

    def _keys(self, fields: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(self.named.get(name, name) for name in fields)

    def convert(self, where: str, record: dict) -> list[dict]:
        """One record as the format reads it (columns already renamed)."""
        return self.format.read(where, record, **self.named)

    def column(self, name: str) -> str:
        """The name a field of the format has in the data."""
        return self.columns.get(name, name)

    def check_schema(self, where: str, schema) -> None:
        """Tables are checked once for their columns (a missing one, text stored as numbers), not row by row."""
        if schema is None:
            return
        import pyarrow as pa

        for name in self.required:
            if self.column(name) not in schema.names:
                mapped = f" (data.columns maps {name!r} to it)" if name in self.columns else ""
                raise DataError(f"{where}: column {self.column(name)!r}{mapped} is missing (columns: "
                                f"{schema.names}); set data.columns or pick the data.format that matches.")
        for name in self.text_fields:
            column = self.column(name)
            if column in schema.names and not (pa.types.is_string(schema.field(column).type)
                                               or pa.types.is_large_string(schema.field(column).type)
                                               or pa.types.is_null(schema.field(column).type)):
                raise DataError(f"{where}: column {column!r} must hold strings, it holds "
                                f"{schema.field(column).type}; fix the data or map another column (data.columns).")

    def convert_chunk(self, name: str, chunk, skipped: Counter) -> Iterator[tuple[int, list[dict], str | None]]:
        """``(number, conversation, tools)`` for each usable record of a chunk (``tools``: the record's tool schemas
        as JSON text, or None); the others are counted in ``skipped``."""
        self.check_schema(name, chunk.schema)
        for where, number, record in chunk.records(name):
            messages = self.conversation(where, record)
            reason = skip_reason(messages)
            if reason:
                skipped[reason] += 1
            else:
                yield number, messages, record_tools(where, record.get(self.column("tools"))) or self.tools

    def conversation(self, where: str, record: dict) -> list[dict]:
        """One record as a conversation, with the recipe's system prompt where the record has none."""
        for name, column in self.columns.items():
            if column in record:
                record[name] = record.pop(column)
            elif name in self.required:
                raise DataError(f"{where}: field {column!r} (data.columns {name!r}) is missing (record has "
                                f"{sorted(record)}).")
        messages = self.convert(where, record)
        if self.system is not None and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": self.system})
        return messages
