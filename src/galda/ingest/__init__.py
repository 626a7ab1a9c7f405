"""Import real data into galda's HDF5 domain format (see ``docs/ingest.md``).

Command line: ``python -m galda.ingest {deepmerge,npy,fits,hdf5} ...``. Library::

    from galda.ingest import ingest_deepmerge, ingest_npy
    ingest_deepmerge("~/deepmerge", "data/simsim", set="simsim")
    ingest_npy("X.npy", "data/mine/target.h5", domain="target")   # unlabelled target

Every function validates its inputs first and raises :class:`IngestError` (a ``ValueError``)
whose message names the file and the problem; outputs are written atomically and never replace
an existing file unless ``force=True``.
"""

from galda.ingest.api import ingest_fits_cube, ingest_fits_stamps, ingest_hdf5, ingest_npy
from galda.ingest.convert import DomainInput, ingest_domain, ingest_pair
from galda.ingest.deepmerge import DeepMergeFiles, find_deepmerge_files, ingest_deepmerge
from galda.ingest.errors import IngestError

__all__ = [
    "DeepMergeFiles",
    "DomainInput",
    "IngestError",
    "find_deepmerge_files",
    "ingest_deepmerge",
    "ingest_domain",
    "ingest_fits_cube",
    "ingest_fits_stamps",
    "ingest_hdf5",
    "ingest_npy",
    "ingest_pair",
    "main",
]


def main(argv=None) -> int:
    """``python -m galda.ingest``; see :func:`galda.ingest.cli.main`."""
    from galda.ingest.cli import main as _main

    return _main(argv)
