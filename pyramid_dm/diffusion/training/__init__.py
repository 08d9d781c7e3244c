"""What training draws and weighs: the distributions of training times (``times``) and the loss with its
weightings (``losses``), over the schedules and the parameterization."""
