"""galda: domain adaptation for galaxy-merger classifiers.

Reproduces Ćiprijanović et al. 2020 (arXiv:2011.03591): MMD and adversarial (DANN) transfer
losses on DeepMerge and ResNet18, source = PSF-convolved simulated images, target = noisy ones.
"""

__version__ = "0.1.0"

from galda.resolvers import register as _register_resolvers

_register_resolvers()


def __getattr__(name: str):
    # galda.load_model without importing torch on `import galda`
    if name == "load_model":
        from galda.inference import load_model

        return load_model
    raise AttributeError(f"module 'galda' has no attribute {name!r}")
