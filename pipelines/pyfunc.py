"""The model classes' import path before the package was layered.

Versions registered before then name it: pickled ones hold `pipelines.pyfunc.IntentPyfunc`, and
the models-from-code ones run a `model_code.py` that imports `pipelines.pyfunc.IntentFromFiles`.
Nothing in the package imports this module.
"""

from pipelines.tracking.model_format import IntentFromFiles, IntentPyfunc

__all__ = ["IntentFromFiles", "IntentPyfunc"]
