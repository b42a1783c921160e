"""The predictor: reading images, weights and engines, the rules that turn evidence into one answer."""
