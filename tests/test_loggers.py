"""W&B mode: offline without credentials, online after `wandb login` (a netrc entry) or with an API key."""

from pyramid_dm.loggers import has_wandb_credentials, wandb_offline


def test_offline_without_credentials_online_after_login(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert not has_wandb_credentials() and wandb_offline(None)
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "x" * 40 + "\n")
    assert has_wandb_credentials() and not wandb_offline(None)
    monkeypatch.setenv("WANDB_MODE", "offline")  # the environment forces offline
    assert wandb_offline(None)
    assert not wandb_offline(False)  # an explicit logger argument wins


def test_api_key_and_other_hosts(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")  # a private server: the entry does not apply
    assert not has_wandb_credentials()
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert has_wandb_credentials() and not wandb_offline(None)


def test_learning_rate_scaling_is_explicit():
    import pytest

    from pyramid_dm.errors import UserError
    from pyramid_dm.models import PixelDiffusion
    from pyramid_dm.models.optim import LR_SCALINGS

    assert LR_SCALINGS["none"](8.0) == 1.0 and LR_SCALINGS["linear"](8.0) == 8.0 and LR_SCALINGS["sqrt"](4.0) == 2.0
    with pytest.raises(UserError, match="model.lr_scaling 'auto'"):
        PixelDiffusion(8, 1, lr_scaling="auto", unet={"base_channels": 16, "channel_mult": [1, 2]})
