"""What runs inside a mover pod: `ferry run` (a TransferSpec in, a termination message out),
the sink that patches the pod's own TransferJob, and the trace context the operator hands
down. It imports the engine (`ferry.mover`) and never the operator or a Kubernetes client:
the mover's start-up stays lean and the status patch goes through the standard library."""
