//go:build tools

// Package tools names the programs this module builds (e2e/cluster/build).
package tools

import (
	_ "github.com/fluxcd/kustomize-controller"
	_ "github.com/fluxcd/source-controller"
)
