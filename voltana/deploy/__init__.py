"""Deployment files generated from a layout: Docker Compose (`voltana compose`) and the
Kubernetes manifests' checks."""
