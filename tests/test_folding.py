"""Batch norm folded into convolutions for inference, and DeepMerge's pool-then-ReLU blocks."""

import copy

import torch
from torch import nn

from galda.models import DeepMerge, ResNet18Merger
from galda.models.folding import FoldedCache, fold_batchnorm


def _with_statistics(net: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, as after training."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))
    return net.eval()


def _reference_fold(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """W' = W γ/√(σ²+ε), b' = (b − μ) γ/√(σ²+ε) + β, in float64."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    w = conv.weight.double() * scale.reshape(-1, 1, 1, 1)
    b = (conv.bias.double() - bn.running_mean.double()) * scale + bn.bias.double()
    return nn.functional.conv2d(x.double(), w, b, padding=conv.padding)


def test_folded_deepmerge_computes_the_same_function_and_leaves_the_original_alone():
    torch.manual_seed(0)
    net = _with_statistics(DeepMerge())
    before = copy.deepcopy(net.state_dict())
    folded = fold_batchnorm(net)
    assert folded is not net
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == 0
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 3
    x = torch.randn(6, 3, 75, 75)
    with torch.no_grad():
        (f_ref, l_ref), (f_fold, l_fold) = net(x), folded(x)
        conv, bn = net.features[0], net.features[1]
        first = folded.features[0](x)
    torch.testing.assert_close(f_fold, f_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(l_fold, l_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(first.double(), _reference_fold(conv, bn, x), rtol=1e-5, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_folding_keeps_channels_last_weights():
    net = _with_statistics(DeepMerge()).to(memory_format=torch.channels_last)
    folded = fold_batchnorm(net)
    convs = [m for m in folded.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)


class _ByAttribute(nn.Module):
    """Convolution and batch norm wired in ``forward``, as torchvision's ResNet blocks are."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def test_a_network_with_nothing_to_fold_comes_back_as_it_is():
    net = _ByAttribute().eval()
    assert fold_batchnorm(net) is net


def test_resnet18_folds_its_downsampling_branches_only():
    net = _with_statistics(ResNet18Merger())
    folded = fold_batchnorm(net)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == n_bn - 3
    x = torch.randn(2, 3, 75, 75)
    with torch.no_grad():
        torch.testing.assert_close(folded(x)[1], net(x)[1], rtol=1e-4, atol=1e-4)


def test_folded_cache_refolds_after_a_step_and_for_swapped_statistics():
    torch.manual_seed(0)
    net = _with_statistics(DeepMerge())
    cache = FoldedCache()
    first = cache.get(net, "source")
    assert cache.get(net, "source") is first  # nothing changed: the same fold
    x = torch.randn(4, 3, 75, 75)
    net.train()
    loss = net(x)[1].sum()
    loss.backward()
    torch.optim.SGD(net.parameters(), lr=0.1).step()  # in place: versions move
    net.eval()
    second = cache.get(net, "source")
    assert second is not first
    with torch.no_grad():
        torch.testing.assert_close(second(x)[1], net(x)[1], rtol=1e-5, atol=1e-5)
    bn = net.features[1]
    saved = bn.running_mean
    bn.running_mean = torch.zeros_like(saved)  # statistics swapped in, as for the target domain
    third = cache.get(net, "source")
    assert third is not second
    with torch.no_grad():
        torch.testing.assert_close(third(x)[1], net(x)[1], rtol=1e-5, atol=1e-5)


def test_clear_refolds_weights_copied_in_through_data():
    """Lightning's weight averaging swaps weights with ``.data.copy_``, which leaves the version
    counters alone: the cache cannot see it, and evaluation clears it at every epoch start."""
    torch.manual_seed(0)
    net = _with_statistics(DeepMerge()).eval()
    cache = FoldedCache()
    x = torch.randn(4, 3, 75, 75)
    stale = cache.get(net, "source")
    with torch.no_grad():
        for p in net.parameters():
            p.data.copy_(p.data * 0.5)  # as WeightAveraging._swap_models does
    assert cache.get(net, "source") is stale  # unseen by the version counters
    cache.clear()
    with torch.no_grad():
        torch.testing.assert_close(cache.get(net, "source")(x)[1], net(x)[1], rtol=1e-5, atol=1e-5)


def _paper_order(net: DeepMerge) -> nn.Sequential:
    """The authors' Conv-BN-ReLU-MaxPool blocks on the same layer objects."""
    f = list(net.features)
    for i in (2, 6, 10):
        f[i], f[i + 1] = f[i + 1], f[i]
    assert isinstance(f[2], nn.ReLU) and isinstance(f[3], nn.MaxPool2d)
    return nn.Sequential(*f)


def test_deepmerge_pool_then_relu_is_bit_for_bit_the_papers_block():
    torch.manual_seed(0)
    net = DeepMerge()
    paper = _paper_order(net)
    x = torch.randn(8, 3, 75, 75, requires_grad=True)
    ours = net.features(x)
    grad_ours = torch.autograd.grad(ours.square().sum(), [x, *net.features.parameters()])
    theirs = paper(x)
    grad_theirs = torch.autograd.grad(theirs.square().sum(), [x, *net.features.parameters()])
    assert torch.equal(ours, theirs)
    assert all(torch.equal(a, b) for a, b in zip(grad_ours, grad_theirs))
    # the parameter names (and so every checkpoint) are the ones the Conv-BN-ReLU-Pool layout had
    assert [k for k in net.state_dict() if k.startswith("features.")][:2] == [
        "features.0.weight",
        "features.0.bias",
    ]
    indices = {k.split(".")[1] for k in net.state_dict() if k.startswith("features.")}
    assert indices == set("014589")
