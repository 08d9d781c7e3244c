import pytest
import torch

from pyramid_dm.checkpoint_io import AtomicCheckpointIO


def test_checkpoint_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)
    assert torch.load(path)["global_step"] == 1

    real_save = torch.save

    def dies_halfway(obj, f):  # write some bytes, then the job is killed
        f.write(b"partial bytes")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(path)["global_step"] == 1  # the previous checkpoint is intact
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # and no partial file is left behind
    io.save_checkpoint({"global_step": 3}, path)
    assert torch.load(path)["global_step"] == 3
