"""Training methods: one shared classifier, subclasses add only their transfer loss."""

from galda.methods.base import MergerClassifier, StepOutputs
from galda.methods.baseline import BaselineClassifier
from galda.methods.bnmix import AdaBNClassifier, BNMixClassifier
from galda.methods.cdan import CDANClassifier
from galda.methods.coral import CORALClassifier
from galda.methods.dann import DANNClassifier
from galda.methods.mcc import MCCClassifier
from galda.methods.mmd import MMDClassifier
from galda.methods.oracle import JointOracleClassifier, OracleClassifier
from galda.methods.selftrain import SelfTrainingClassifier

__all__ = [
    "AdaBNClassifier",
    "BNMixClassifier",
    "BaselineClassifier",
    "CDANClassifier",
    "CORALClassifier",
    "DANNClassifier",
    "JointOracleClassifier",
    "MCCClassifier",
    "MMDClassifier",
    "MergerClassifier",
    "OracleClassifier",
    "SelfTrainingClassifier",
    "StepOutputs",
]
