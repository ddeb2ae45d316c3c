"""init_from_checkpoint: a second training stage starts from the first stage's weights, or fails clearly."""

import pytest
import torch

from common.engines.training import init_from_checkpoint
from common.methods.joint_affine import JointAffineDeformNet

SMALL = {"enc_channels": (4, 8), "dilations": (1, 2), "dec_channels": (4,), "norm": "instance"}


def _affine_stage(tmp_path, seed=0):
    torch.manual_seed(seed)
    stage1 = JointAffineDeformNet(2, use_deformable=False, **SMALL)
    with torch.no_grad():
        stage1.affine_head.bias.copy_(torch.arange(6.0) / 100)
    path = tmp_path / "stage1.pt"
    torch.save({"model": stage1.state_dict(), "optimizer": {}}, path)
    return stage1, path


def test_copies_encoder_and_head_and_keeps_fresh_decoder(tmp_path):
    stage1, path = _affine_stage(tmp_path)
    torch.manual_seed(1)
    full = JointAffineDeformNet(2, **SMALL)
    decoder_before = full.flow.conv.weight.detach().clone()
    out = init_from_checkpoint(full, path, allow_missing=("dilated.", "ups.", "dec_blocks.", "flow."))
    assert out is full
    for name, value in stage1.state_dict().items():
        assert torch.equal(full.state_dict()[name], value), name
    assert torch.equal(full.flow.conv.weight, decoder_before)
    # the affine part now predicts what stage 1 predicted
    x = torch.rand(1, 2, 16, 16)
    stage1.eval(), full.eval()
    with torch.no_grad():
        assert torch.allclose(full.affine_matrix(x), stage1.affine_matrix(x))


def test_refuses_missing_tensors_outside_allow_list(tmp_path):
    _, path = _affine_stage(tmp_path)
    full = JointAffineDeformNet(2, **SMALL)
    with pytest.raises(
        ValueError, match=r"stage1\.pt.*checkpoint lacks: dec_blocks|stage1\.pt.*checkpoint lacks: dilated"
    ):
        init_from_checkpoint(full, path)


def test_refuses_other_network(tmp_path):
    _, path = _affine_stage(tmp_path)
    other = JointAffineDeformNet(2, **{**SMALL, "enc_channels": (4, 16)})
    with pytest.raises(ValueError, match="shape mismatch"):
        init_from_checkpoint(other, path, allow_missing=("dilated.", "ups.", "dec_blocks.", "flow."))
    running = JointAffineDeformNet(2, use_deformable=False, **{**SMALL, "norm": "batch"})
    with pytest.raises(ValueError, match="checkpoint lacks: .*running_mean"):
        init_from_checkpoint(running, path)


def test_none_is_a_no_op_and_missing_file_is_named(tmp_path):
    net = JointAffineDeformNet(2, **SMALL)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert init_from_checkpoint(net, None) is net and init_from_checkpoint(net, "") is net
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        init_from_checkpoint(net, tmp_path / "nope.pt")


def test_a_folder_stands_for_its_newest_checkpoint(tmp_path):
    stage1, path = _affine_stage(tmp_path)
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / "latest_checkpoint_epoch=3.pt").write_bytes(path.read_bytes())
    full = JointAffineDeformNet(2, **SMALL)
    init_from_checkpoint(full, ckpts, allow_missing=("dilated.", "ups.", "dec_blocks.", "flow."))
    assert torch.equal(full.affine_head.bias, stage1.affine_head.bias)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty: no latest\*\.pt checkpoint"):
        init_from_checkpoint(full, empty)
