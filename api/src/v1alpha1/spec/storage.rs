//! Object storage: a bucket and a prefix in S3 or an S3-compatible store.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// A prefix in a bucket of S3 or of an S3-compatible store (SeaweedFS, Ceph RGW, R2, ...).
/// Credentials never appear here: the trainer takes them from the pod's environment, the
/// standard AWS variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`),
/// which the operator sets from `credentialsSecret`, or its workload identity
/// (`AWS_WEB_IDENTITY_TOKEN_FILE` with `AWS_ROLE_ARN`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStoreSpec {
    /// `s3://<bucket>/<prefix>`: the bucket (3 to 63 lowercase letters, digits, dots and
    /// hyphens) and the prefix the objects go under (optional; `/`-separated, without empty,
    /// `.` or `..` parts).
    #[schemars(length(min = 8, max = 1024))]
    #[x_kube(validation = Rule::new("self.matches('^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^/]+)*/?$') && !self.split('/').exists(s, s == '.' || s == '..')")
        .message("store.uri is s3://<bucket>/<prefix>: a bucket of 3 to 63 lowercase letters, digits, dots and hyphens, then an optional prefix without empty, '.' or '..' parts (such as s3://lm-checkpoints/team/run-1)"))]
    pub uri: String,
    /// The store's endpoint, for a store other than AWS S3 (`https://...`, or `http://...` for
    /// one on a trusted network); unset means AWS S3 itself, or `AWS_ENDPOINT_URL` when the pod
    /// sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 8, max = 512))]
    #[x_kube(validation = Rule::new("self.matches('^https?://[^/?# ]+(/[^?# ]*)?$')")
        .message("store.endpoint is an http:// or https:// URL of the store (such as https://s3.example.com or http://seaweedfs.storage:8333)"))]
    pub endpoint: Option<String>,
    /// The bucket's region (AWS S3: where the bucket is; most S3-compatible stores accept any);
    /// unset means `AWS_REGION` when the pod sets it, else `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub region: Option<String>,
    /// A Secret in the job's namespace whose keys `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`
    /// and (optional) `AWS_SESSION_TOKEN` the trainer's pods get as those variables; only its
    /// name is here, its values reach only the pods. Whoever applies the job must be allowed
    /// to `get` that Secret (the chart's secret-references policy); unset means the pod's own
    /// environment or workload identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')")
        .message("store.credentialsSecret is the name of a Secret in the job's namespace (lowercase letters, digits, '-' and '.')"))]
    pub credentials_secret: Option<String>,
}
