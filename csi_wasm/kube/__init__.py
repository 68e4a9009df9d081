"""The Kubernetes API, seen from the node: Events on pods and the prefetch ConfigMap watch."""
