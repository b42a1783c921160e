import numpy as np
import pytest
import torch

from q1net.data.patches import PatchSampler
from q1net.models.modules import Q1Classifier, Q1Net, Q1Regressor


@pytest.fixture(scope="module")
def batch(photos):
    sampled = PatchSampler(patches_per_crop=16).batch(photos, 256, np.random.default_rng(0))
    return torch.from_numpy(sampled.patches), torch.from_numpy(sampled.qualities)


def train_losses(module, batch, steps=40):
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = module.loss(module(batch[0]), batch[1].float())
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("module_class", [Q1Regressor, Q1Net, Q1Classifier])
def test_real_training_steps_lower_the_loss(module_class, batch):
    losses = train_losses(module_class(k=4), batch)
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


def test_confidence_target_carries_no_gradient():
    module = Q1Net(lam=1.0)
    outputs = torch.tensor([[80.0, 40.0]], requires_grad=True)  # (confidence, quality)
    module.loss(outputs, torch.tensor([50.0])).backward()
    # quality term alone: d|q^ - q|/dq^ = -1; a gradient through c = 100 - |q - q^| would add +1 more
    assert outputs.grad[0, 1].item() == -1.0
    assert outputs.grad[0, 0].item() == -1.0  # c^ = 80 below its target 90


def test_lambda_weights_the_confidence_term():
    outputs, quality = torch.tensor([[50.0, 40.0]]), torch.tensor([50.0])
    assert Q1Net(lam=0.5).loss(outputs, quality).item() == pytest.approx(10 + 0.5 * 40)
    assert Q1Net(lam=1.0).loss(outputs, quality).item() == pytest.approx(10 + 40)


def test_classifier_curriculum_grows_from_two_classes():
    module = Q1Classifier(k=4, curriculum=[2, 10, 100], curriculum_steps=5)
    module.train()
    logits = torch.zeros(3, 100)
    logits[:, :50] = 3.0  # all mass on qualities 1..50
    quality = torch.tensor([10.0, 30.0, 49.0])
    assert module.classes_now() == 2
    # two classes, halves 1..50 and 51..100: p(left) = 50 e^3 / (50 e^3 + 50)
    assert module.loss(logits, quality).item() == pytest.approx(np.log1p(np.exp(-3)), rel=1e-5)
    assert module.loss(logits, torch.tensor([90.0, 90.0, 90.0])).item() == pytest.approx(np.log1p(np.exp(3)), rel=1e-5)
    module.eval()
    assert module.classes_now() == 100  # evaluation always scores the full problem
    assert module.loss(logits, quality).item() == pytest.approx(np.log(50) + np.log1p(np.exp(-3)), rel=1e-5)


def test_classifier_refuses_a_curriculum_that_does_not_end_at_100():
    with pytest.raises(ValueError, match="curriculum"):
        Q1Classifier(curriculum=[2, 50])


def test_init_weights_starts_from_a_trained_net_of_the_same_shape(tmp_path):
    from q1net.predictor.weights import WeightsError, save_weights

    torch.manual_seed(1)
    trained = Q1Net(k=4)
    torch.nn.init.constant_(trained.net.fc.weight, 0.25)  # differs from any fresh initialisation
    path = tmp_path / "start.safetensors"
    save_weights(trained.net, path, {"tau": 90.0})
    tuned = Q1Net(k=4, init_weights=str(path))
    for name, tensor in trained.net.state_dict().items():
        assert torch.equal(tensor, tuned.net.state_dict()[name]), name
    with pytest.raises(WeightsError, match="init_weights hold"):
        Q1Net(k=8, init_weights=str(path))
