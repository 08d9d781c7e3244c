"""What every pyramid_dm LightningModule does alike: check the data it is fitted on, stamp its checkpoints."""

from __future__ import annotations

import lightning as L

from ..errors import UserError


def check_data_shape(module: L.LightningModule, what: str = "model") -> None:
    """Refuse data whose images differ from the ``channels`` x ``image_size`` the module was built for."""
    dm = getattr(module.trainer, "datamodule", None)
    if dm is None or not hasattr(dm, "image_size"):
        return
    h = module.hparams
    got, want = (dm.channels, dm.image_size), (h.channels, h.image_size)
    if got != want:
        raise UserError(
            f"data {getattr(dm, 'dataset_name', '')!r} gives {got[0]}x{got[1]}x{got[1]} images but the {what} was "
            f"built for {want[0]}x{want[1]}x{want[1]} (model.image_size / model.channels)"
        )


def checkpoint_stamp(module: L.LightningModule, **extra) -> dict:
    """``checkpoint["pyramid_dm"]``: the family and class that wrote it (what loaders check), plus ``extra``."""
    return {"family": module.family, "class_path": f"{type(module).__module__}.{type(module).__name__}", **extra}
