"""Training jobs for the default models (run by jobs/train_*.py and `logoscan train-*`)."""
