"""The plain networks: Q1Net (q1net.py) and the paper's Table 2 peers (peers.py); no Lightning, no predictor."""
