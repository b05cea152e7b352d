"""The error every data problem raises: the message names the file, line (or row) and field, and what to do."""

from ..errors import UserError

__all__ = ["DataError"]


class DataError(UserError, ValueError):
    """A data file is malformed; the message names file, line and field."""
