"""The import path of `pipelines.core.features` before the package was layered, which model versions
pickled before then name. Nothing in the package imports this module."""

from pipelines.core.features import SessionFeaturizer

__all__ = ["SessionFeaturizer"]
