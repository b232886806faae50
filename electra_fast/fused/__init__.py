"""torch.library custom ops and autograd around the Triton launchers, one module per kernel."""
