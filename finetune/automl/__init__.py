"""AutoML with Optuna: a study over a search space in YAML (`configs/automl/*.yaml`), each
trial a `tune-trial` job of the job runner, the study in Optuna's RDB storage on the stack's
database, the chosen trial registered with its study and trial in its tags."""
