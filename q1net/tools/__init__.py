"""Tools around the predictor: evaluation, benchmarks, the paper's tables, the training study, pictures."""
