"""The run folder: claiming and probing it before any compute, checking a resume against the recipe it continues,
the space a run will need, the template and recipe saved beside the weights (``write_run_files``), checkpoints
marked complete and the stop on SIGINT/SIGTERM that leaves one, and the rescue when the final save fails. It builds
on the base layer alone, so training, the methods and the commands above it all reach the folder through here.
"""
from .checkpoints import COMPLETE, MarkComplete, latest_checkpoint, latest_run_dir, write_best
from .folder import RunFolder, check_free_space, expected_bytes, open_run_folder, save_or_rescue, write_run_files
from .stopping import GracefulStop

__all__ = ["COMPLETE", "GracefulStop", "MarkComplete", "RunFolder", "check_free_space", "expected_bytes",
           "latest_checkpoint", "latest_run_dir", "open_run_folder", "save_or_rescue", "write_best",
           "write_run_files"]
