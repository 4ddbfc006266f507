"""A real single-machine Kubernetes cluster: the control plane and two real nodes.

`python -m e2e.cluster up|down|status` drives it; see e2e/README.md.
"""
