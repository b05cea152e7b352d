"""The training step and what it is made of: ``SFTTrainer`` (the loss hook and the save hook over
``transformers.Trainer``), the loss over supervised tokens with its chunked LM head, the collators that pad or pack a
batch and the token-budget bins packed batches are drawn from, the divergence guard that stops a blown-up run, the
share of the CPU cores a run takes beside other runs, and the trackers that log every step. This layer builds on
models and data (it reads their token ids and labels) and on the run folder (it saves into one); the methods and
evaluation sit above it, and nothing here knows which method or model family is training.
"""
from .collators import PaddingCollator, PaddingFreeCollator
from .divergence import TrainingDiverged
from .packing import TokenBudgetBins, best_fit_decreasing
from .sharing import ShareCores
from .tracking import check_trackers, finish_tracking, tokens_seen_mode, tracking_callbacks, training_report_to
from .trainers import SFTTrainer

__all__ = ["PaddingCollator", "PaddingFreeCollator", "SFTTrainer", "ShareCores", "TokenBudgetBins", "TrainingDiverged",
           "best_fit_decreasing", "check_trackers", "finish_tracking", "tokens_seen_mode", "tracking_callbacks",
           "training_report_to"]
