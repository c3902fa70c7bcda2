"""The experiment application around the engine: validation, the job runner, tables, plots,
W&B tracking and the Hydra sweep callback. `triforce.cli` is its Hydra entry point."""
