"""Components: specs, the manager, models, schedulers and image processing."""
