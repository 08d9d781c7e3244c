"""Denoiser wrappers that steer sampling toward a class: classifier-free guidance (``classifier_free``) and
classifier guidance by a noise-conditional classifier (``classifier``)."""
