//go:build tools

// Package tools names the program this module builds (e2e/cluster/build).
package tools

import _ "github.com/argoproj/argo-cd/v2/cmd"
