//! A child the API server refuses as invalid (400 BadRequest, 422 Invalid) is refused again on
//! every retry: the spec that made it must change. The refusal becomes a permanent error whose
//! message is the API server's, with the fields of the attempt's Job it names translated into
//! the TrainingJob's own (`spec.template.spec.containers[0].volumeMounts[7]` is
//! `spec.podTemplate.volumeMounts[1]` when the operator mounts six volumes of its own first).

use k8s_openapi::api::batch::v1::Job;

use frugal_api::v1alpha1::PodOverrides;

use super::error::Error;

/// Whether the API server refused a request as invalid, not for a reason that may pass.
pub fn is_invalid(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 400 || s.code == 422)
}

/// `e` as a permanent error when the API server refused the child as invalid; `job` is the
/// attempt's Job when that was the child, for naming the TrainingJob's fields.
pub fn classify(e: kube::Error, job: Option<(&Job, &PodOverrides)>) -> Error {
    let status = match &e {
        kube::Error::Api(status) if is_invalid(&e) => status,
        _ => return Error::Kube(e),
    };
    let fields = job.map(|(job, overrides)| spec_fields(&status.message, job, overrides)).unwrap_or_default();
    let named = if fields.is_empty() { String::new() } else { format!(" (in the TrainingJob: {})", fields.join(", ")) };
    Error::Rejected(format!(
        "the API server refused a child of this job as invalid: {}{named}; change the TrainingJob's spec (the operator tries again when it changes)",
        status.message
    ))
}

/// The TrainingJob fields a Job field path in `message` comes from, in order, without repeats.
pub fn spec_fields(message: &str, job: &Job, overrides: &PodOverrides) -> Vec<String> {
    let pod = job.spec.as_ref().and_then(|s| s.template.spec.as_ref());
    let container = pod.and_then(|p| p.containers.first());
    let own = |total: usize, added: usize| total.saturating_sub(added);
    let own_mounts = own(container.and_then(|c| c.volume_mounts.as_ref()).map_or(0, Vec::len), overrides.volume_mounts.len());
    let own_env = own(container.and_then(|c| c.env.as_ref()).map_or(0, Vec::len), overrides.env.len());
    let own_volumes = own(pod.and_then(|p| p.volumes.as_ref()).map_or(0, Vec::len), overrides.volumes.len());
    // (the Job's prefix, the TrainingJob's field, how many items before the spec's own)
    let indexed = [
        ("spec.template.spec.containers[0].volumeMounts[", "spec.podTemplate.volumeMounts", own_mounts),
        ("spec.template.spec.containers[0].env[", "spec.podTemplate.env", own_env),
        ("spec.template.spec.volumes[", "spec.podTemplate.volumes", own_volumes),
    ];
    let plain = [
        ("spec.template.spec.containers[0].resources", "spec.resources (cpu, memory)"),
        ("spec.template.spec.containers[0].image", "spec.image"),
        ("spec.template.metadata.labels", "spec.podTemplate.labels"),
        ("spec.template.metadata.annotations", "spec.podTemplate.annotations"),
        ("spec.template.spec.affinity", "spec.podTemplate.affinity"),
        ("spec.template.spec.imagePullSecrets", "spec.podTemplate.imagePullSecrets"),
        ("spec.template.spec.nodeSelector", "spec.resources.nodeSelector"),
        ("spec.template.spec.tolerations", "spec.resources.tolerations"),
        ("spec.template.spec.priorityClassName", "spec.resources.priorityClassName"),
    ];
    let mut found: Vec<(usize, String)> = Vec::new();
    for (prefix, field, before) in indexed {
        for (at, _) in message.match_indices(prefix) {
            let rest = &message[at + prefix.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let Ok(index) = digits.parse::<usize>() else { continue };
            let named = match index.checked_sub(before) {
                Some(i) => format!("{field}[{i}]"),
                // one of the operator's own: the spec can only have collided with it
                None => field.to_string(),
            };
            found.push((at, named));
        }
    }
    for (prefix, field) in plain {
        for (at, _) in message.match_indices(prefix) {
            found.push((at, field.to_string()));
        }
    }
    found.sort();
    let mut fields: Vec<String> = Vec::new();
    for (_, f) in found {
        if !fields.contains(&f) {
            fields.push(f);
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;
    use crate::training_job::children::{build_job, tests::planned};
    use k8s_openapi::api::core::v1::VolumeMount;
    use kube::core::Status;

    fn api_error(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(Status { code, ..Status::failure(message, "Invalid") }.boxed())
    }

    #[test]
    fn the_jobs_fields_are_named_as_the_training_jobs() {
        let mut job = planned(1);
        let mounts = vec![
            VolumeMount { name: "data".into(), mount_path: "/data".into(), ..Default::default() },
            VolumeMount { name: "missing".into(), mount_path: "/more".into(), ..Default::default() },
        ];
        job.valid.spec.pod_template = Some(PodOverrides { volume_mounts: mounts, ..Default::default() });
        let built = build_job(&job, 1, &Settings::default());
        let overrides = job.valid.spec.pod_template.clone().unwrap();
        let own = built.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].volume_mounts.as_ref().unwrap().len() - 2;
        let message = format!(
            "Job.batch \"lm-a1\" is invalid: [spec.template.spec.containers[0].volumeMounts[{}].name: Not found: \"missing\", spec.template.spec.containers[0].resources.requests[cpu]: Invalid value: \"-1\": must be greater than or equal to 0]",
            own + 1
        );
        assert_eq!(spec_fields(&message, &built, &overrides), ["spec.podTemplate.volumeMounts[1]", "spec.resources (cpu, memory)"]);
        let e = classify(api_error(422, &message), Some((&built, &overrides)));
        assert_eq!(e.permanent_reason(), Some(crate::conditions::reasons::REJECTED_BY_API_SERVER));
        let text = e.to_string();
        assert!(
            text.contains("Not found: \"missing\"")
                && text.contains("(in the TrainingJob: spec.podTemplate.volumeMounts[1], spec.resources (cpu, memory))"),
            "{text}"
        );
    }

    #[test]
    fn only_invalid_requests_are_permanent() {
        for code in [400, 422] {
            assert!(classify(api_error(code, "bad"), None).permanent_reason().is_some(), "{code}");
        }
        for code in [403, 409, 429, 500, 503] {
            assert_eq!(classify(api_error(code, "later"), None).permanent_reason(), None, "{code}");
        }
    }
}
