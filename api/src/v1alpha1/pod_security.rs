//! What `spec.podTemplate` may add to a trainer pod, as CEL rules on the items of its volume and
//! mount lists: the API server refuses the rest at `kubectl apply`, so the operator never creates
//! a pod that Pod Security `restricted` would refuse the job's author (docs/operator.md, "Threat
//! model"). The operator checks the same lists again before it builds a pod.

use k8s_openapi::api::core::v1::{Volume, VolumeMount};
use schemars::{Schema, SchemaGenerator};
use serde_json::{Value, json};

/// Volume sources a training pod may use: those Pod Security `restricted` allows.
pub const ALLOWED_VOLUME_SOURCES: [&str; 8] =
    ["persistentVolumeClaim", "configMap", "secret", "emptyDir", "projected", "ephemeral", "csi", "downwardAPI"];

/// The source a volume uses, by its field name; `None` when it sets none.
pub fn volume_source(v: &Volume) -> Option<&'static str> {
    let value = serde_json::to_value(v).ok()?;
    let object = value.as_object()?;
    object.keys().find(|k| *k != "name").and_then(|k| SOURCES.iter().copied().find(|s| s == k))
}

/// Annotation prefixes that would change the trainer's AppArmor or seccomp profile.
pub const SECURITY_ANNOTATION_PREFIXES: [&str; 3] =
    ["container.apparmor.security.beta.kubernetes.io/", "seccomp.security.alpha.kubernetes.io/", "container.seccomp.security.alpha.kubernetes.io/"];

/// Every volume source the Volume type has, allowed or not (the schema's properties but `name`).
const SOURCES: [&str; 30] = [
    "awsElasticBlockStore",
    "azureDisk",
    "azureFile",
    "cephfs",
    "cinder",
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "fc",
    "flexVolume",
    "flocker",
    "gcePersistentDisk",
    "gitRepo",
    "glusterfs",
    "hostPath",
    "image",
    "iscsi",
    "nfs",
    "persistentVolumeClaim",
    "photonPersistentDisk",
    "portworxVolume",
    "projected",
    "quobyte",
    "rbd",
    "scaleIO",
    "secret",
    "storageos",
    "vsphereVolume",
];

/// Why a volume may not be added, if it may not.
pub fn refuse_volume(v: &Volume) -> Option<String> {
    match volume_source(v) {
        Some(source) if ALLOWED_VOLUME_SOURCES.contains(&source) => None,
        Some(source) => Some(format!("volume {:?} is a {source} volume; {VOLUMES_FIX}", v.name)),
        // a volume that names no source is an emptyDir (the API server defaults it so)
        None => None,
    }
}

const VOLUMES_FIX: &str = "a training pod may mount only persistentVolumeClaim, configMap, secret, emptyDir, projected, \
     ephemeral, csi or downwardAPI volumes (Pod Security restricted): put the data on a PersistentVolumeClaim";

/// Why a mount may not be added, if it may not.
pub fn refuse_mount(m: &VolumeMount) -> Option<String> {
    if m.mount_propagation.as_deref().is_some_and(|p| p != "None") {
        return Some(format!("mount {:?}: {MOUNT_PROPAGATION_FIX}", m.mount_path));
    }
    for (field, path) in [("subPath", &m.sub_path), ("subPathExpr", &m.sub_path_expr)] {
        if path.as_deref().is_some_and(escapes) {
            return Some(format!("mount {:?}: {field} {path:?} {SUB_PATH_FIX}", m.mount_path));
        }
    }
    None
}

const MOUNT_PROPAGATION_FIX: &str = "mountPropagation must be None or unset: Bidirectional needs a privileged container, \
     and HostToContainer only matters for host volumes, which training pods may not mount";
const SUB_PATH_FIX: &str = "must be a relative path inside its volume (no leading '/', no '..'); remove it or name a directory in the volume";

/// A sub-path that is absolute or steps out of its volume.
fn escapes(path: &str) -> bool {
    path.starts_with('/') || path.split('/').any(|part| part == "..")
}

/// The list's schema with `rules` on each item, at most 16 items, and the longest value of each
/// string property in `lengths` (bounds let the API server estimate the rules' cost).
fn with_item_rules(mut schema: Schema, rules: Value, lengths: &[(&str, u32)]) -> Schema {
    let object = schema.ensure_object();
    object.insert("maxItems".into(), 16.into());
    if let Some(items) = object.get_mut("items").and_then(Value::as_object_mut) {
        items.insert("x-kubernetes-validations".into(), rules);
        for (property, max) in lengths {
            if let Some(p) = items.get_mut("properties").and_then(|p| p.get_mut(*property)).and_then(Value::as_object_mut) {
                p.insert("maxLength".into(), (*max).into());
            }
        }
    }
    schema
}

/// `spec.podTemplate.volumes`: each item uses an allowed source, and the message names it.
pub fn volumes_schema(generator: &mut SchemaGenerator) -> Schema {
    let refused: Vec<&str> = SOURCES.iter().copied().filter(|s| !ALLOWED_VOLUME_SOURCES.contains(s)).collect();
    let rule = refused.iter().map(|s| format!("!has(self.{s})")).collect::<Vec<_>>().join(" && ");
    let which = refused.iter().rev().fold("'other'".to_string(), |rest, s| format!("has(self.{s}) ? '{s}' : {rest}"));
    let message = format!("podTemplate.volumes: {VOLUMES_FIX}");
    let expression = format!("'podTemplate.volumes: volume ' + self.name + ' is a ' + ({which}) + ' volume; {VOLUMES_FIX}'");
    let rules = json!([{"rule": rule, "message": message, "messageExpression": expression}]);
    with_item_rules(generator.subschema_for::<Vec<Volume>>(), rules, &[("name", 63)])
}

/// `spec.podTemplate.volumeMounts`: no mount propagation, sub-paths inside their volume.
pub fn volume_mounts_schema(generator: &mut SchemaGenerator) -> Schema {
    let inside = |f: &str| format!("!has(self.{f}) || !(self.{f}.startsWith('/') || self.{f}.matches('(^|/)[.][.](/|$)'))");
    let rules = json!([
        {"rule": "!has(self.mountPropagation) || self.mountPropagation == 'None'", "message": format!("podTemplate.volumeMounts: {MOUNT_PROPAGATION_FIX}")},
        {"rule": inside("subPath"), "message": format!("podTemplate.volumeMounts: subPath {SUB_PATH_FIX}")},
        {"rule": inside("subPathExpr"), "message": format!("podTemplate.volumeMounts: subPathExpr {SUB_PATH_FIX}")},
    ]);
    let lengths = [("name", 63), ("mountPath", 1024), ("subPath", 1024), ("subPathExpr", 1024), ("mountPropagation", 32)];
    with_item_rules(generator.subschema_for::<Vec<VolumeMount>>(), rules, &lengths)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EmptyDirVolumeSource, HostPathVolumeSource};

    #[test]
    fn sources_are_named_and_only_restricted_ones_pass() {
        let host = Volume { name: "host".into(), host_path: Some(HostPathVolumeSource { path: "/".into(), type_: None }), ..Default::default() };
        assert_eq!(volume_source(&host), Some("hostPath"));
        assert!(refuse_volume(&host).unwrap().contains("\"host\" is a hostPath volume"));
        let scratch = Volume { name: "scratch".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() };
        assert_eq!(refuse_volume(&scratch), None);
        assert_eq!(refuse_volume(&Volume { name: "none".into(), ..Default::default() }), None);
    }

    #[test]
    fn every_volume_source_of_the_type_is_known() {
        let schema = schemars::generate::SchemaSettings::openapi3().into_generator().into_root_schema_for::<Volume>();
        let value = serde_json::to_value(schema).unwrap();
        let mut properties: Vec<String> = value["properties"].as_object().unwrap().keys().filter(|k| *k != "name").cloned().collect();
        properties.sort();
        assert_eq!(properties, SOURCES, "a new volume source: decide whether training pods may use it");
    }

    #[test]
    fn the_annotation_rule_names_the_same_prefixes() {
        let crd = serde_json::to_string(&<crate::TrainingJob as kube::CustomResourceExt>::crd()).unwrap();
        for prefix in SECURITY_ANNOTATION_PREFIXES {
            assert!(crd.contains(&format!("'{prefix}'")), "{prefix}");
        }
    }

    #[test]
    fn mounts_keep_to_their_volume() {
        let mount = |propagation: Option<&str>, sub: Option<&str>| VolumeMount {
            name: "data".into(),
            mount_path: "/data".into(),
            mount_propagation: propagation.map(Into::into),
            sub_path: sub.map(Into::into),
            ..Default::default()
        };
        assert_eq!(refuse_mount(&mount(None, Some("shard-1/train"))), None);
        assert_eq!(refuse_mount(&mount(Some("None"), None)), None);
        assert!(refuse_mount(&mount(Some("Bidirectional"), None)).unwrap().contains("mountPropagation"));
        assert!(refuse_mount(&mount(None, Some("../other"))).unwrap().contains("subPath"));
        assert!(refuse_mount(&mount(None, Some("/etc"))).unwrap().contains("subPath"));
        assert_eq!(refuse_mount(&mount(None, Some("a..b"))), None);
    }
}
