import torch

from core.augment import random_views


def test_views_are_seeded_differentiable_and_sized():
    images = torch.rand(3, 3, 32, 32, requires_grad=True)
    a = random_views(images, 4, 24, torch.Generator().manual_seed(1))
    b = random_views(images, 4, 24, torch.Generator().manual_seed(1))
    c = random_views(images, 4, 24, torch.Generator().manual_seed(2))
    assert a.shape == (12, 3, 24, 24)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    a.sum().backward()
    assert images.grad.abs().sum() > 0


def test_views_keep_the_image_content():
    # A half-red, half-blue image stays mostly red and blue under mild augmentation.
    image = torch.zeros(1, 3, 32, 32)
    image[0, 0, :, :16] = 1.0
    image[0, 2, :, 16:] = 1.0
    views = random_views(image, 16, 32, torch.Generator().manual_seed(0))
    assert views[:, 1].mean() < 0.05
    assert 0.3 < views[:, 0].mean() < 0.7
