//go:build tools

// Package tools pins kubeadm, which only the kind node image needs (e2e/kind/node-image): kind
// runs `kubeadm init` inside its node. Its own module, so adding it never changes the cache key
// of the local cluster's Kubernetes build (go/k8s).
package tools

import (
	_ "k8s.io/kubernetes/cmd/kubeadm"
)
