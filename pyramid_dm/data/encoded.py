"""Shards that hold a first stage's latents beside the images (``python -m pyramid_dm shards encode``).

Each sample keeps its image and label and gains ``<key>.lat.npy``: the trained first stage's levels of the image
(every level of a multi-scale autoencoder, coarse first), flattened and concatenated, float32; with flips, also
``<key>.latflip.npy``, the levels of the mirrored image (the flip is done on the image, before encoding, as the
image loader does it). The manifest's ``encoded`` entry records the autoencoder (its file and the SHA-256 of its
weights, :meth:`~pyramid_dm.stages.FirstStage.fingerprint`), the level shapes and whether flips are stored.

Latent and latent-pyramid training read the latents instead of decoding and encoding every image again (the fast-DiT
fork measured the encoder at about a third of a DiT step); the model refuses latents of another autoencoder. Our
latent diffusion trains on the posterior mean of a KL autoencoder (and on the pre-quantisation output of a VQ one),
never on a sample of the posterior, so the mean is all a stored latent needs to be for the same loss. Evaluation
still reads the images, and sampling still decodes through the autoencoder.
"""

from __future__ import annotations

import io

import numpy as np

from .manifest import Manifest, ShardError

LATENTS, FLIPPED = "lat.npy", "latflip.npy"


def encoded_record(manifest: Manifest) -> dict | None:
    """The manifest's ``encoded`` entry (None: image shards), checked for the keys a reader uses."""
    record = manifest.data.get("encoded")
    if record is None:
        return None
    need = {"autoencoder", "autoencoder_sha256", "level_shapes", "hflip"}
    if not isinstance(record, dict) or not need <= set(record):
        raise ShardError(f"{manifest.path}: manifest key 'encoded' must hold {sorted(need)}; encode the shards again")
    return record


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()
