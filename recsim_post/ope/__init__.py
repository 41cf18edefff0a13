"""Off-policy evaluation: the estimators (IPS, SNIPS, DM, DR, Switch-DR), the logged bandit data,
propensity and reward (q^) models fitted on public logs, and the report that puts every estimate
next to the exact value of the same estimand."""
