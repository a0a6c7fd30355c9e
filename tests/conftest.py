"""Test defaults: no network to the hub, one CPU thread (the machines running these are small and shared)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402 - after the environment is set

torch.set_num_threads(1)
