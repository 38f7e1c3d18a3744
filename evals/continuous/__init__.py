"""The continuous-training loop: drift on a model's traffic -> evaluation on held-out suites
and recent labelled traffic -> retraining on corrections plus replayed data -> the gate ->
promotion, every step recorded and linked in `evals_loop_events`."""
