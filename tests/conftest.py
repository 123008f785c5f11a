"""Suite-wide settings: tests run tiny tensors, where one intra-op thread is fastest and steadiest."""

import torch

torch.set_num_threads(1)
