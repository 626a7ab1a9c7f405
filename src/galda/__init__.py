"""galda: domain adaptation for galaxy-merger classifiers.

Reproduces Ćiprijanović et al. 2020 (arXiv:2011.03591): MMD and adversarial (DANN) transfer
losses on DeepMerge and ResNet18, source = PSF-convolved simulated images, target = noisy ones.
"""

__version__ = "0.1.0"

from galda.resolvers import register as _register_resolvers

_register_resolvers()
