"""The bottom of the math: noise schedules (the log-SNR of a time, ``base``; NCSN's ``ve``; flow matching's
straight path, ``flow``), the Karras ramp and the sampling grids (``discretization``). Imports nothing above it."""
