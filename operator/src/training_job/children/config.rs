//! The headless Service (the pods' subdomain: stages reach their pipeline neighbours on its
//! `pipeline` port and the same stages of the next replica on `ring`), the ConfigMap holding the
//! trainer configuration and the Secret holding the stage-to-stage token.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServicePort, ServiceSpec};

use frugal_api::contract::paths;

use super::child_meta;
use crate::names::{JOB_LABEL, MANAGED_BY, MANAGED_BY_VALUE};
use crate::training_job::plan::PlannedJob;
use crate::training_job::validate::ValidJob;

pub fn build_service(job: &ValidJob) -> Service {
    Service {
        metadata: child_meta(job, job.names.service(), job.names.labels("pipeline")),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            // stages find each other before they are Ready: they become Ready by connecting
            publish_not_ready_addresses: Some(true),
            selector: Some(BTreeMap::from([(MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string()), (JOB_LABEL.to_string(), job.names.job.clone())])),
            ports: Some(vec![
                ServicePort { name: Some("pipeline".into()), port: paths::PIPELINE_PORT.into(), ..Default::default() },
                ServicePort { name: Some("ring".into()), port: paths::RING_PORT.into(), ..Default::default() },
                ServicePort { name: Some("metrics".into()), port: paths::METRICS_PORT.into(), ..Default::default() },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn build_config_map(job: &PlannedJob) -> ConfigMap {
    ConfigMap {
        metadata: child_meta(&job.valid, job.valid.names.config_map(), job.valid.names.labels("config")),
        data: Some(BTreeMap::from([(paths::CONFIG_KEY.to_string(), job.trainer_config.clone())])),
        ..Default::default()
    }
}

/// The Secret, created once with `token` and never rotated while the job runs.
pub fn build_secret(job: &ValidJob, token: &str) -> Secret {
    Secret {
        metadata: child_meta(job, job.names.secret(), job.names.labels("token")),
        type_: Some("Opaque".into()),
        immutable: Some(true),
        data: Some(BTreeMap::from([(paths::TOKEN_KEY.to_string(), ByteString(token.as_bytes().to_vec()))])),
        ..Default::default()
    }
}

/// A fresh random token: 32 bytes from the OS, hex-encoded.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::training_job::children::tests::{assert_owned, planned};
    use frugal_api::contract::TrainerConfig;

    #[test]
    fn the_service_is_headless_and_selects_the_jobs_pods() {
        let job = planned(2).valid;
        let s = build_service(&job);
        assert_owned(&s.metadata);
        assert_eq!(s.metadata.name.as_deref(), Some("lm"));
        let spec = s.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        let selector = spec.selector.unwrap();
        assert_eq!(selector["frugal.dev/training-job"], "lm");
        assert_eq!(selector.len(), 2, "every attempt's pods, not one attempt's");
        let ports: Vec<(&str, i32)> = spec.ports.as_ref().unwrap().iter().map(|p| (p.name.as_deref().unwrap(), p.port)).collect();
        assert_eq!(ports, [("pipeline", 29500), ("ring", 29501), ("metrics", 9090)]);
    }

    #[test]
    fn the_config_map_holds_the_trainer_config() {
        let job = planned(2);
        let cm = build_config_map(&job);
        assert_owned(&cm.metadata);
        assert_eq!(cm.metadata.name.as_deref(), Some("lm-config"));
        let text = &cm.data.unwrap()[paths::CONFIG_KEY];
        let config = TrainerConfig::from_yaml(text).unwrap();
        assert_eq!(config.job.name, "lm");
        assert_eq!(config.spec, job.valid.spec);
    }

    #[test]
    fn the_secret_is_immutable_and_tokens_are_random() {
        let job = planned(1).valid;
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        let s = build_secret(&job, &a);
        assert_owned(&s.metadata);
        assert_eq!(s.metadata.name.as_deref(), Some("lm-token"));
        assert_eq!(s.immutable, Some(true));
        assert_eq!(s.data.unwrap()[paths::TOKEN_KEY].0, a.as_bytes());
    }
}
