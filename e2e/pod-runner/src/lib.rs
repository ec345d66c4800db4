//! Test infrastructure, not part of frugal's product: a stand-in for the kubelet on kwok's fake
//! nodes. kwok runs no containers, so this runs the pods that carry the label
//! `frugal.dev/pod-runner: "true"` as local processes: their volumes (ConfigMaps, Secrets,
//! emptyDirs, claims as shared directories) written to a directory per pod, mount paths rewritten
//! to it, their environment resolved (downward API included), a real service-account token from
//! the TokenRequest API with a kubeconfig that uses it, and their peers' hostnames mapped to
//! loopback addresses in `/etc/hosts`. It reports Running, Succeeded or Failed with the exit code
//! through the pod's status, and turns a deletion into SIGTERM, then SIGKILL after the grace
//! period, as the kubelet does.

pub mod hosts;
pub mod pod;
pub mod runner;

/// The label that marks a pod for the runner.
pub const MARKER_LABEL: &str = "frugal.dev/pod-runner";
