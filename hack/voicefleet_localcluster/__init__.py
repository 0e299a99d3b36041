"""Local Kubernetes for tests and `make up`.

Binaries built from Go modules (`binaries`), a launcher (`controlplane`), a process
kubelet (`kubelet`) and the pytest fixture (`pytest_plugin`).
"""
