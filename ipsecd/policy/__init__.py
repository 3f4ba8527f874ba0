"""The Policy Agent and what it reads: IPsec policies, their stores and files, and their expansion.

model.py (pure data) <- policyfile.py (YAML) and validate.py (checks) <- expand.py (specific filters for the
driver, settings for IKE) <- store.py (where policies live) <- agent.py (the Policy Agent: reads, applies,
polls).
"""
