import math

import torch

from service.lopt import preprocess

P = 10.0


def test_log_sign_on_edge_values():
    g = torch.tensor([0.0, 1e-30, -1e-30, math.exp(-P) * 0.5, 1.0, -1.0, 1e30, -1e30, 3.0])
    x = preprocess(g, "log_sign", P)
    assert x.shape == (9, 2)
    assert torch.isfinite(x).all()
    # zero and tiny values take the linear branch: (-1, e^p g)
    assert x[0].tolist() == [-1.0, 0.0]
    assert x[1, 0] == -1.0 and 0 < x[1, 1] < 1e-20
    assert x[2, 0] == -1.0 and x[2, 1] < 0
    assert x[3, 0] == -1.0 and abs(x[3, 1].item() - 0.5) < 1e-6
    # |g| >= e^-p takes (log|g| / p, sign g)
    assert x[4].tolist() == [0.0, 1.0]
    assert x[5].tolist() == [0.0, -1.0]
    assert abs(x[6, 0].item() - math.log(1e30) / P) < 1e-5 and x[6, 1] == 1.0
    assert x[7, 1] == -1.0
    assert abs(x[8, 0].item() - math.log(3.0) / P) < 1e-6


def test_branches_meet_at_the_threshold():
    eps = math.exp(-P)
    below = preprocess(torch.tensor([eps * (1 - 1e-6)]), "log_sign", P)
    above = preprocess(torch.tensor([eps * (1 + 1e-6)]), "log_sign", P)
    assert torch.allclose(below, above, atol=1e-4)


def test_none_passes_gradients_through():
    g = torch.tensor([0.0, -2.5, 1e10])
    assert torch.equal(preprocess(g, "none"), g.unsqueeze(-1))


def test_preprocess_is_differentiable_without_nan():
    g = torch.tensor([0.0, 1e-9, 2.0], requires_grad=True)
    preprocess(g, "log_sign", P).sum().backward()
    assert torch.isfinite(g.grad).all()
