"""`llm-finetune run`'s progress bar is fed by `StepProgress`: step, steps and last loss."""

from types import SimpleNamespace

from finetune.worker import StepProgress


def test_steps_carry_the_last_training_loss() -> None:
    seen: list[tuple[int, int, str]] = []
    callback = StepProgress(lambda *update: seen.append(update))
    state = SimpleNamespace(global_step=1, max_steps=4)
    callback.on_step_end(None, state, None)
    callback.on_log(None, state, None, logs={"loss": 1.23456})
    state.global_step = 2
    callback.on_log(None, state, None, logs={"eval_loss": 2.0})
    callback.on_step_end(None, state, None)
    assert seen == [(1, 4, ""), (1, 4, "loss 1.2346"), (2, 4, "loss 1.2346")]
