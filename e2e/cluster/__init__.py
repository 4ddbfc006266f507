"""A real single-machine Kubernetes control plane plus a process node agent.

`python -m e2e.cluster up|down|status` drives it; see e2e/README.md.
"""
