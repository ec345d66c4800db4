//go:build tools

// Package tools pins SeaweedFS's `weed` command, the S3-compatible server the trainer's
// object-storage tests run (scripts/seaweedfs.sh builds it).
package tools

import (
	_ "github.com/seaweedfs/seaweedfs/weed"
)
