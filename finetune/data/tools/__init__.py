"""Data tools behind ``python -m finetune.data``: filtering, mixing, format conversion and statistics."""
from .convert import ConversionError, convert_file, load, to_record, write_records
from .filter import DEFAULT_KEYWORDS, FilterConfig, FilterReport, filter_file
from .mix import Source, mix_files, parse_source, plan_counts
from .rouge import lcs_length, rouge_l, tokenize
from .stats import compute_stats, plot_histogram

__all__ = ["DEFAULT_KEYWORDS", "ConversionError", "FilterConfig", "FilterReport", "Source", "compute_stats",
           "convert_file", "filter_file", "lcs_length", "load", "mix_files", "parse_source", "plan_counts",
           "plot_histogram", "rouge_l", "to_record", "tokenize", "write_records"]
