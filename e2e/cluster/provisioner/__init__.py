"""The `ferry-local` StorageClass's provisioner: hostPath volumes in the cluster's state dir.

The one piece of the cluster that is not upstream Kubernetes: real clusters get theirs
from a CSI driver or rancher's local-path-provisioner. Run as `python -m
e2e.cluster.provisioner <admin kubeconfig> <data root>` (started by `python -m e2e.cluster up`).
"""

STORAGE_CLASS = "ferry-local"
PROVISIONER = "ferry.dev/local-dir"
