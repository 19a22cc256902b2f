"""The import path of `pipelines.core.contract` before the package was layered, which model versions
pickled before then name. Nothing in the package imports this module."""

from pipelines.core.contract import ContractError, DatasetSpec, RangeRule

__all__ = ["ContractError", "DatasetSpec", "RangeRule"]
