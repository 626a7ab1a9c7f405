"""No domain adaptation: cross-entropy on source images only (Table 1, first row)."""

from __future__ import annotations

from typing import ClassVar

from galda.methods.base import MergerClassifier


class BaselineClassifier(MergerClassifier):
    """Source-only training; target images are not even forwarded (unless entropy_weight > 0)."""

    uses_target_images: ClassVar[bool] = False
