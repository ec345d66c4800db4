//! The job's NetworkPolicy: its trainer pods accept the stage-to-stage (`pipeline`) and
//! replica-ring (`ring`) ports only from the job's own pods, and the `metrics` port only from the
//! namespace the operator was told Prometheus scrapes from (any namespace when it was told none).
//! A cluster whose network plugin enforces NetworkPolicies then keeps every other pod off the
//! stage ports; the transport's own authentication holds either way.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use frugal_api::contract::paths;

use super::child_meta;
use crate::names::JOB_UID_LABEL;
use crate::training_job::validate::ValidJob;

/// The label every namespace carries with its own name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

pub fn build_network_policy(job: &ValidJob, metrics_namespace: Option<&str>) -> NetworkPolicy {
    let own_pods = LabelSelector { match_labels: Some(BTreeMap::from([(JOB_UID_LABEL.to_string(), job.uid.clone())])), ..Default::default() };
    let tcp = |port: u16| NetworkPolicyPort { protocol: Some("TCP".into()), port: Some(IntOrString::Int(port.into())), ..Default::default() };
    let scrapers = NetworkPolicyPeer {
        namespace_selector: Some(match metrics_namespace {
            Some(ns) => {
                LabelSelector { match_labels: Some(BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), ns.to_string())])), ..Default::default() }
            }
            None => LabelSelector::default(),
        }),
        ..Default::default()
    };
    NetworkPolicy {
        metadata: child_meta(job, job.names.network_policy(), job.names.labels("network")),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(own_pods.clone()),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![NetworkPolicyPeer { pod_selector: Some(own_pods), ..Default::default() }]),
                    ports: Some(vec![tcp(paths::PIPELINE_PORT), tcp(paths::RING_PORT)]),
                },
                NetworkPolicyIngressRule { from: Some(vec![scrapers]), ports: Some(vec![tcp(paths::METRICS_PORT)]) },
            ]),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::training_job::children::tests::{assert_owned, planned};

    #[test]
    fn stage_ports_admit_only_the_jobs_own_pods_and_metrics_the_named_namespace() {
        let job = planned(2).valid;
        let np = build_network_policy(&job, Some("monitoring"));
        assert_owned(&np.metadata);
        assert_eq!(np.metadata.name.as_deref(), Some("lm"));
        let spec = np.spec.unwrap();
        let selected = spec.pod_selector.unwrap().match_labels.unwrap();
        assert_eq!(selected, BTreeMap::from([(JOB_UID_LABEL.to_string(), "u-1".to_string())]));
        assert_eq!(spec.policy_types.unwrap(), ["Ingress"]);
        let rules = spec.ingress.unwrap();
        let ports = |r: &NetworkPolicyIngressRule| -> Vec<IntOrString> { r.ports.iter().flatten().filter_map(|p| p.port.clone()).collect() };
        assert_eq!(ports(&rules[0]), [IntOrString::Int(paths::PIPELINE_PORT.into()), IntOrString::Int(paths::RING_PORT.into())]);
        let peer = &rules[0].from.as_ref().unwrap()[0];
        assert!(peer.namespace_selector.is_none(), "the job's own namespace only");
        assert_eq!(peer.pod_selector.as_ref().unwrap().match_labels.as_ref().unwrap()[JOB_UID_LABEL], "u-1");
        assert_eq!(ports(&rules[1]), [IntOrString::Int(paths::METRICS_PORT.into())]);
        let scrapers = rules[1].from.as_ref().unwrap()[0].namespace_selector.as_ref().unwrap();
        assert_eq!(scrapers.match_labels.as_ref().unwrap()[NAMESPACE_NAME_LABEL], "monitoring");
        // told no namespace: scraped from any
        let open = build_network_policy(&job, None).spec.unwrap().ingress.unwrap();
        assert_eq!(open[1].from.as_ref().unwrap()[0].namespace_selector, Some(LabelSelector::default()));
    }
}
