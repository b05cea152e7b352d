"""Data: readers for each record format, tokenization with loss masks, caching and the label audit."""
from .audit import LabelAudit, example_spans, show_example
from .dataset import SFTData, build_datasets, cache_dir
from .readers import DataError, read_examples
from .tokenize import IGNORE_INDEX, Encoder, plain_messages

__all__ = ["DataError", "Encoder", "IGNORE_INDEX", "LabelAudit", "SFTData", "build_datasets", "cache_dir",
           "example_spans", "plain_messages", "read_examples", "show_example"]
