import pytest
import torch

from q1net.nets.q1net import Q1NetConfig, Q1Network, count_parameters, create_model, list_models

# Table 3 of the paper (parameters including BN running statistics, REFERENCE.md)
PAPER_PARAMS = {"q1net_baseline": 125_000, "q1net_light": 71_000, "q1net_heavy": 280_000, "q1net_no_bb": 49_000}


@pytest.mark.parametrize(("name", "paper"), sorted(PAPER_PARAMS.items()))
def test_parameter_counts_match_table_3(name, paper):
    count = count_parameters(create_model(name), with_bn_statistics=True)
    assert abs(count - paper) / paper < 0.05, f"{name}: {count} vs paper {paper}"


def test_baseline_count_is_exact():
    assert count_parameters(create_model("q1net_baseline"), with_bn_statistics=True) == 125_234


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_runs_and_matches_its_config(name):
    net = create_model(name).eval()
    out = net(torch.rand(5, 3, 16, 16) * 255)
    assert out.shape == (5, net.config.alpha)
    quality, confidence = net.quality_confidence(out)
    assert quality.shape == (5,)
    assert (confidence is None) == (net.config.alpha == 1)
    if net.config.head == "sigmoid":
        assert out.min() >= 0 and out.max() <= 100
    else:
        assert quality.min() >= 1 and quality.max() <= 100 and confidence.max() <= 100


def test_spatial_size_shrinks_to_two_by_two():
    net = create_model("q1net_baseline")
    assert net.features(torch.zeros(1, 3, 16, 16)).shape == (1, 8, 2, 2)


def test_output_order_is_confidence_then_quality():
    net = Q1Network(Q1NetConfig())
    outputs = torch.tensor([[97.0, 37.0]])
    quality, confidence = net.quality_confidence(outputs)
    assert quality.item() == 37.0 and confidence.item() == 97.0


def test_classifier_quality_is_argmax_level():
    net = create_model("q1net_classifier")
    logits = torch.full((1, 100), -5.0)
    logits[0, 36] = 5.0
    quality, confidence = net.quality_confidence(logits)
    assert quality.item() == 37 and confidence.item() > 50


def test_builders_refuse_unknown_arguments_and_names():
    with pytest.raises(TypeError, match="unknown Q1Net arguments"):
        create_model("q1net_baseline", width=3)
    with pytest.raises(KeyError, match="unknown model"):
        create_model("resnet50")
    assert create_model("q1net_baseline", k=6).config.k == 6
