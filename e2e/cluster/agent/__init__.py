"""The node agent: a small "process kubelet" that runs Ferry-image pods as local processes.

Run as `python -m e2e.cluster.agent <agent.json>` (started by `python -m e2e.cluster up`).
"""
