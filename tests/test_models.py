import torch

from galda.models import DeepMerge, ResNet18Merger, count_trainable
from galda.models.discriminator import DomainDiscriminator


def test_deepmerge_matches_the_paper():
    net = DeepMerge()
    assert count_trainable(net) == 174_626
    assert net.feature_dim == 2_592
    features, logits = net(torch.randn(4, 3, 75, 75))
    assert features.shape == (4, 2_592) and logits.shape == (4, 2)


def test_resnet18_bottleneck_and_learning_rate_groups():
    net = ResNet18Merger()
    features, logits = net(torch.randn(2, 3, 75, 75))
    assert features.shape == (2, 256) and logits.shape == (2, 2)
    groups = net.parameter_groups()
    assert [g["lr_mult"] for g in groups] == [1.0, 10.0]
    head_params = {id(p) for p in groups[1]["params"]}
    assert head_params == {id(p) for p in [*net.bottleneck.parameters(), *net.head.parameters()]}
    assert sum(p.numel() for g in groups for p in g["params"]) == count_trainable(net)
    assert 11.0e6 < count_trainable(net) < 11.5e6


def test_discriminator_on_deepmerge_features():
    d = DomainDiscriminator(2_592)
    assert d(torch.randn(5, 2_592)).shape == (5,)


def test_deepmerge_penultimate_feature_layer_is_the_last_hidden_layer():
    torch.manual_seed(0)
    flat = DeepMerge()
    torch.manual_seed(0)
    pen = DeepMerge(feature_layer="penultimate")
    assert pen.feature_dim == 32 and count_trainable(pen) == count_trainable(flat)
    x = torch.randn(3, 3, 75, 75)
    flat.eval(), pen.eval()
    features, logits = pen(x)
    # plain reference: the flatten layer through the first four head modules
    reference = flat.head[:4](flat.features(x))
    torch.testing.assert_close(features, reference)
    torch.testing.assert_close(logits, flat(x)[1])
    assert (features >= 0).all()  # after the hidden layer's ReLU


def test_deepmerge_refuses_an_unknown_feature_layer():
    import pytest

    with pytest.raises(ValueError, match="feature_layer=conv3"):
        DeepMerge(feature_layer="conv3")


def test_preflight_refuses_an_unknown_feature_layer(compose_cfg, sim_data_dir):
    import pytest

    from galda.errors import ConfigError
    from galda.preflight import preflight_config

    cfg = compose_cfg(
        "data=tiny",
        f"paths.data_dir={sim_data_dir}",
        "model=deepmerge",
        "model.net.feature_layer=conv3",
    )
    with pytest.raises(ConfigError, match="model.net.feature_layer=conv3: must be flatten or"):
        preflight_config(cfg)


def test_deepmerge_width_multiplies_the_filters_only():
    import pytest

    wide = DeepMerge(width=2)
    convs = [m for m in wide.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64]
    assert wide.feature_dim == 64 * 9 * 9
    features, logits = wide(torch.randn(2, 3, 75, 75))
    assert features.shape == (2, 5184) and logits.shape == (2, 2)
    assert [m.out_features for m in wide.head if isinstance(m, torch.nn.Linear)] == [64, 32, 2]
    # width 1 is the authors' network, parameter for parameter
    assert count_trainable(DeepMerge(width=1)) == count_trainable(DeepMerge()) == 174_626
    with pytest.raises(ValueError, match="model.net.width=0"):
        DeepMerge(width=0)


def test_preflight_refuses_a_width_below_one(compose_cfg, sim_data_dir):
    import pytest

    from galda.errors import ConfigError
    from galda.preflight import preflight_config

    cfg = compose_cfg(
        "data=tiny", f"paths.data_dir={sim_data_dir}", "model=deepmerge", "model.net.width=0"
    )
    with pytest.raises(ConfigError, match="model.net.width=0: must be a whole number"):
        preflight_config(cfg)
