"""The import path of `pipelines.core.scorer` before the package was layered, which model versions
pickled before then name. Nothing in the package imports this module."""

from pipelines.core.scorer import IntentModel

__all__ = ["IntentModel"]
