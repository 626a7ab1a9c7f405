"""Data: the HDF5 domain-file format and the paired source/target DataModule.

Imports are lazy so that light tools (``galda.ingest``, ``galda.simulate``) that need only the
file format do not pay for importing torch and Lightning.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "ArrayDataset": "galda.data.datamodule",
    "DataMissingError": "galda.data.datamodule",
    "DomainAdaptationDataModule": "galda.data.datamodule",
    "split_galaxies": "galda.data.datamodule",
    "DataFormatError": "galda.data.h5format",
    "DomainData": "galda.data.h5format",
    "DomainWriter": "galda.data.h5format",
    "read_domain": "galda.data.h5format",
    "write_domain": "galda.data.h5format",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'galda.data' has no attribute {name!r}")
