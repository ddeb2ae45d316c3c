"""Network parts shared by several methods: the VoxelMorph-style U-Net and its flow head.

Each method's own network lives in its package, ``common.methods.<method>.network``.
"""

from __future__ import annotations

from common.networks.voxelmorph import FlowHead, RegUNet, check_pair_input

__all__ = ["FlowHead", "RegUNet", "check_pair_input"]
