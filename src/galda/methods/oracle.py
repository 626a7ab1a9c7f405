"""The ceiling row: trained WITH target labels. Never a domain-adaptation result.

Every results file it writes carries ``uses_target_labels: true`` and the report marks the row ‡.
"""

from __future__ import annotations

from typing import ClassVar

from galda.methods.base import MergerClassifier


class OracleClassifier(MergerClassifier):
    """CE(source) + CE(target) with target labels (the DataModule hands them over)."""

    uses_target_images: ClassVar[bool] = True
    uses_target_labels: ClassVar[bool] = True
