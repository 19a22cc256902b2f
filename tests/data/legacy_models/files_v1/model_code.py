"""The registered scorer, loaded from code (MLflow's models-from-code): the model itself is data,
the `model` artifact of each version (see `pipelines.pyfunc.IntentFromFiles`)."""

from mlflow.models import set_model

from pipelines.pyfunc import IntentFromFiles

set_model(IntentFromFiles())
