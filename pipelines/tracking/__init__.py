"""MLflow: runs, the registry and its aliases, the model format (models-from-code, no pickles),
the champion/challenger judgement and the sweep callback. Imports only the layers below."""
