"""Offline metrics on held-out logs (NDCG@k, HR@k, MRR) and the reward-model report: what a team
without the truth would measure, computed next to it."""
