"""Training methods: one shared classifier, subclasses add only their transfer loss."""

from galda.methods.base import MergerClassifier, StepOutputs
from galda.methods.baseline import BaselineClassifier
from galda.methods.bnmix import AdaBNClassifier, BNMixClassifier
from galda.methods.dann import DANNClassifier
from galda.methods.mmd import MMDClassifier
from galda.methods.oracle import JointOracleClassifier, OracleClassifier

__all__ = [
    "AdaBNClassifier",
    "BNMixClassifier",
    "BaselineClassifier",
    "DANNClassifier",
    "JointOracleClassifier",
    "MMDClassifier",
    "MergerClassifier",
    "OracleClassifier",
    "StepOutputs",
]
