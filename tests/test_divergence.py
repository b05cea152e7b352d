"""The divergence guard's rules, step by step (the runs that trip it are in ``tests/test_reliability.py``)."""
import math

import pytest

from finetune.training.divergence import DivergenceGuard, TrainingDiverged


def steps(guard: DivergenceGuard, losses, norms):
    for step, (loss, norm) in enumerate(zip(losses, norms), start=1):
        guard.add_loss(loss, lines=[step])
        guard.step(step, norm)


def test_a_learning_run_with_noisy_batches_is_left_alone():
    guard = DivergenceGuard(2e-4)
    losses = [3.0, 2.9, 3.4, 2.7, 2.5] + [2.0 + (i % 3) * 0.8 for i in range(200)]  # spikes to 3.6
    steps(guard, losses, [1.0] * len(losses))


def test_a_non_finite_gradient_stops_before_the_optimizer_applies_it():
    with pytest.raises(TrainingDiverged, match=r"step 3: the gradient norm is inf.*lines \[3\]"):
        steps(DivergenceGuard(1.0), [3.0] * 3, [1.0, 1.0, math.inf])


def test_under_fp16_the_loss_scaler_gets_its_skipped_steps():
    guard = DivergenceGuard(1.0, fp16=True)
    steps(guard, [3.0] * 8, [math.inf] * 4 + [1.0] + [math.inf] * 3)  # never 5 in a row
    with pytest.raises(TrainingDiverged, match="gradient norm is inf for 5 steps"):
        steps(guard, [3.0] * 5, [math.inf] * 5)


def test_a_nan_loss_stops_at_once():
    with pytest.raises(TrainingDiverged, match="step 2: the loss is nan"):
        steps(DivergenceGuard(1.0), [3.0, math.nan], [1.0, 1.0])


def test_zero_gradients_for_five_steps_stop():
    guard = DivergenceGuard(1e6)
    steps(guard, [10.8] * 4, [0.0] * 4)
    with pytest.raises(TrainingDiverged, match=r"exactly 0 for 5 steps \(loss 10.80\).*now 1e\+06"):
        steps(guard, [10.8], [0.0])


def test_a_run_that_ends_while_a_rule_fires_is_stopped_at_the_end():
    """#30: lr 1e6 for 6 steps had zero gradients from step 3, one short of the patience, and was saved."""
    guard = DivergenceGuard(1e6)
    steps(guard, [10.9, 10.8, 10.8, 10.8, 10.8, 10.8], [3.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    with pytest.raises(TrainingDiverged, match=r"step 6: the gradients were exactly 0 for the last 4 steps"):
        guard.finish(6)
    high = DivergenceGuard(1.0)
    steps(high, [3.0] * 5 + [6.5], [1.0] * 6)
    with pytest.raises(TrainingDiverged, match="far above its start for the last 1 steps"):
        high.finish(6)
    learning = DivergenceGuard(1e-4)
    steps(learning, [3.0, 2.5, 2.6, 2.0, 1.8, 1.9], [2.0, 1.5, 1.7, 1.1, 1.0, 1.2])
    learning.finish(6)  # a run that learned ends quietly


def test_a_loss_far_above_its_start_for_five_steps_stops():
    guard = DivergenceGuard(1.0)
    steps(guard, [3.0] * 5 + [5.9] * 10, [1.0] * 15)  # start + max(2, start) = 6.0 is the line
    with pytest.raises(TrainingDiverged, match=r"far above its start for 5 steps \(6.50, it started at 3.00\)"):
        steps(guard, [6.5] * 5, [1.0] * 5)


def test_micro_batches_add_up_to_the_step_loss():
    guard = DivergenceGuard(1.0)
    for step in range(1, 6):  # gradient accumulation: four micro-batches of 0.75 make a loss of 3.0
        for _ in range(4):
            guard.add_loss(0.75)
        guard.step(step, 1.0)
    assert guard._first == [3.0] * 5
