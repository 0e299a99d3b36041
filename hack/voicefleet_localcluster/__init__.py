"""Local Kubernetes for tests and `make up`: binaries built from Go modules, a launcher, a process kubelet."""
