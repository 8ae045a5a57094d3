"""One trial, in the training process: couple the LR, plan the budget, train, record."""
