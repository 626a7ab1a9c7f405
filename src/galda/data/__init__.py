"""Data: the HDF5 domain-file format and the paired source/target DataModule."""

from galda.data.datamodule import (
    ArrayDataset,
    DataMissingError,
    DomainAdaptationDataModule,
    split_galaxies,
)
from galda.data.h5format import DataFormatError, DomainData, DomainWriter, read_domain, write_domain

__all__ = [
    "ArrayDataset",
    "DataFormatError",
    "DataMissingError",
    "DomainAdaptationDataModule",
    "DomainData",
    "DomainWriter",
    "read_domain",
    "split_galaxies",
    "write_domain",
]
