"""Samplers over one D(x; sigma) interface: the registry and the ODE/SDE samplers (``core``), annealed Langevin
dynamics (``langevin``), predictor-corrector and Euler-Maruyama (``score_sde``) and the shared state helpers
(``state``)."""
