"""Test harness: real Kubernetes components (apiextensions-apiserver + etcd) for the test tiers."""
