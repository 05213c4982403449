from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def shapes_teacher():
    from core.teachers import create_teacher

    return create_teacher("shapes-mini", device="cpu")
