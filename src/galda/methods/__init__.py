"""Training methods: one shared classifier, subclasses add only their transfer loss."""

from galda.methods.base import MergerClassifier
from galda.methods.baseline import BaselineClassifier
from galda.methods.dann import DANNClassifier
from galda.methods.mmd import MMDClassifier
from galda.methods.oracle import OracleClassifier

__all__ = [
    "BaselineClassifier",
    "DANNClassifier",
    "MMDClassifier",
    "MergerClassifier",
    "OracleClassifier",
]
