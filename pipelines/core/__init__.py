"""The pure core: the session contract, features, the model and its scorer, evaluation, the gate,
drift, the synthetic world and touchpoint optimisation.

No Hydra, no MLflow, and no file system beyond the paths a caller passes in. Every layer above
builds on these functions; nothing here imports from above.
"""
