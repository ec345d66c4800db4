//! What a pod asks of its kubelet, turned into a local process: its volumes written to a
//! directory, its environment resolved, mount paths rewritten to those directories.
//!
//! Pure where it can be: [`rewrite_paths`], [`expand`] and [`field_ref`] are unit-tested.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, ServiceAccount, Volume};
use kube::api::PostParams;
use kube::{Api, Client};

/// Where the kubelet would mount a pod's service-account token.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// A pod made ready to run: the command, its environment and working directory.
#[derive(Debug)]
pub struct Prepared {
    pub program: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub dir: PathBuf,
}

/// The API server as the runner reaches it, for the kubeconfig a pod's process gets.
#[derive(Clone)]
pub struct ApiServer {
    pub url: String,
    pub ca_pem: String,
}

/// Replaces a leading mount path in `value` by the local directory standing in for it.
pub fn rewrite_paths(value: &str, mounts: &[(String, PathBuf)]) -> String {
    // longest mount path first, so /etc/frugal/x wins over /etc
    let mut sorted: Vec<&(String, PathBuf)> = mounts.iter().collect();
    sorted.sort_by_key(|(m, _)| std::cmp::Reverse(m.len()));
    for (mount, local) in sorted {
        let mount = mount.trim_end_matches('/');
        if value == mount {
            return local.display().to_string();
        }
        if let Some(rest) = value.strip_prefix(mount).filter(|r| r.starts_with('/')) {
            return format!("{}{rest}", local.display());
        }
    }
    value.to_string()
}

/// Expands `$(VAR)` references as the kubelet does: known variables are substituted, `$$(VAR)`
/// escapes, unknown references stay as written.
pub fn expand(value: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix("$(") {
            out.push_str("$(");
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) if env.contains_key(&body[..end]) => {
                    out.push_str(&env[&body[..end]]);
                    rest = &body[end + 1..];
                }
                _ => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The value of a downward-API field path.
pub fn field_ref(pod: &Pod, path: &str, pod_ip: &str) -> Result<String> {
    let meta = &pod.metadata;
    let lookup = |map: &Option<BTreeMap<String, String>>, key: &str| map.as_ref().and_then(|m| m.get(key)).cloned().unwrap_or_default();
    let quoted = |prefix: &str| path.strip_prefix(prefix).and_then(|r| r.strip_suffix("']")).map(str::to_string);
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into()),
        "status.podIP" => pod_ip.to_string(),
        "status.hostIP" => "127.0.0.1".to_string(),
        _ => {
            if let Some(key) = quoted("metadata.labels['") {
                lookup(&meta.labels, &key)
            } else if let Some(key) = quoted("metadata.annotations['") {
                lookup(&meta.annotations, &key)
            } else {
                bail!("field path {path:?} is not supported by the pod runner")
            }
        }
    })
}

/// Writes the pod's volumes, resolves its environment and rewrites mount paths.
pub async fn prepare(
    client: &Client,
    api_server: &ApiServer,
    pod: &Pod,
    pod_ip: &str,
    dir: &Path,
    shared_claims: &Path,
    path_prefix: &str,
) -> Result<Prepared> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let spec = pod.spec.as_ref().ok_or_else(|| anyhow!("pod has no spec"))?;
    let container: &Container = spec.containers.first().ok_or_else(|| anyhow!("pod has no container"))?;
    let sa = spec.service_account_name.clone().unwrap_or_else(|| "default".into());

    // One directory per volume, a home and a /tmp of the pod's own.
    let volumes_dir = dir.join("volumes");
    let mut local_volumes: BTreeMap<String, PathBuf> = BTreeMap::new();
    for volume in spec.volumes.iter().flatten() {
        let local = materialize(client, pod, &ns, volume, &volumes_dir, shared_claims).await?;
        local_volumes.insert(volume.name.clone(), local);
    }
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let base = local_volumes.get(&m.name).ok_or_else(|| anyhow!("volume mount {:?} names no volume", m.name))?;
        let local = match &m.sub_path {
            Some(sub) if !sub.is_empty() => base.join(sub),
            _ => base.clone(),
        };
        std::fs::create_dir_all(&local).ok();
        mounts.push((m.mount_path.clone(), local));
    }

    // The service-account token, from the TokenRequest API, bound to this pod.
    let token = request_token(client, pod, &ns, &sa).await?;
    let sa_dir = dir.join("serviceaccount");
    std::fs::create_dir_all(&sa_dir)?;
    std::fs::write(sa_dir.join("token"), &token)?;
    std::fs::write(sa_dir.join("ca.crt"), &api_server.ca_pem)?;
    std::fs::write(sa_dir.join("namespace"), &ns)?;
    if spec.automount_service_account_token != Some(false) {
        mounts.push((SERVICE_ACCOUNT_DIR.to_string(), sa_dir.clone()));
    }
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, pod_kubeconfig(api_server, &sa_dir.join("token"), &ns))?;

    let tmp = dir.join("tmp");
    let home = dir.join("home");
    std::fs::create_dir_all(&tmp)?;
    std::fs::create_dir_all(&home)?;
    if !mounts.iter().any(|(m, _)| m == "/tmp") {
        mounts.push(("/tmp".into(), tmp.clone()));
    }

    // The environment: the kubelet's defaults, then envFrom, then env in order.
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert("PATH".into(), format!("{path_prefix}:/usr/local/bin:/usr/bin:/bin"));
    env.insert("HOME".into(), home.display().to_string());
    env.insert("TMPDIR".into(), tmp.display().to_string());
    env.insert("HOSTNAME".into(), spec.hostname.clone().or(pod.metadata.name.clone()).unwrap_or_default());
    env.insert("KUBECONFIG".into(), kubeconfig.display().to_string());
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        if let Some(cm) = &source.config_map_ref {
            let data = Api::<ConfigMap>::namespaced(client.clone(), &ns).get(&cm.name).await?.data;
            for (k, v) in data.unwrap_or_default() {
                env.insert(format!("{prefix}{k}"), rewrite_paths(&v, &mounts));
            }
        }
        if let Some(s) = &source.secret_ref {
            let data = Api::<Secret>::namespaced(client.clone(), &ns).get(&s.name).await?.data;
            for (k, v) in data.unwrap_or_default() {
                env.insert(format!("{prefix}{k}"), String::from_utf8_lossy(&v.0).into_owned());
            }
        }
    }
    // Only what the pod itself says is rewritten; the runner's own paths above are host paths.
    for var in container.env.iter().flatten() {
        let value = match &var.value_from {
            None => rewrite_paths(&expand(var.value.as_deref().unwrap_or(""), &env), &mounts),
            Some(from) => {
                if let Some(f) = &from.field_ref {
                    field_ref(pod, &f.field_path, pod_ip)?
                } else if let Some(r) = &from.config_map_key_ref {
                    let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns).get(&r.name).await?;
                    cm.data.and_then(|d| d.get(&r.key).cloned()).unwrap_or_default()
                } else if let Some(r) = &from.secret_key_ref {
                    let s = Api::<Secret>::namespaced(client.clone(), &ns).get(&r.name).await?;
                    s.data.and_then(|d| d.get(&r.key).map(|v| String::from_utf8_lossy(&v.0).into_owned())).unwrap_or_default()
                } else {
                    // resourceFieldRef: a fake node has no real limits to report
                    String::new()
                }
            }
        };
        env.insert(var.name.clone(), value);
    }

    let mut words: Vec<String> = container.command.clone().unwrap_or_default();
    words.extend(container.args.clone().unwrap_or_default());
    let mut words = words.into_iter().map(|w| rewrite_paths(&expand(&w, &env), &mounts));
    let program = words.next().ok_or_else(|| anyhow!("pod's container has no command"))?;
    let workdir = container.working_dir.as_deref().map(|w| PathBuf::from(rewrite_paths(w, &mounts))).unwrap_or_else(|| home.clone());
    Ok(Prepared { program, args: words.collect(), env, dir: workdir })
}

async fn materialize(client: &Client, pod: &Pod, ns: &str, volume: &Volume, volumes_dir: &Path, shared_claims: &Path) -> Result<PathBuf> {
    let local = volumes_dir.join(&volume.name);
    if let Some(claim) = &volume.persistent_volume_claim {
        // Claims outlive pods: one directory per claim, shared by every pod that mounts it
        // (ReadWriteMany) and kept across attempts, as a checkpoint volume must be.
        let dir = shared_claims.join(ns).join(&claim.claim_name);
        std::fs::create_dir_all(&dir)?;
        return Ok(dir);
    }
    std::fs::create_dir_all(&local)?;
    if let Some(cm) = &volume.config_map {
        let found = Api::<ConfigMap>::namespaced(client.clone(), ns)
            .get(&cm.name)
            .await
            .with_context(|| format!("configMap {:?} of volume {:?}", cm.name, volume.name))?;
        write_items(&local, found.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())), cm.items.as_deref())?;
    } else if let Some(s) = &volume.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let found =
            Api::<Secret>::namespaced(client.clone(), ns).get(&name).await.with_context(|| format!("secret {name:?} of volume {:?}", volume.name))?;
        write_items(&local, found.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)), s.items.as_deref())?;
    } else if let Some(projected) = &volume.projected {
        for source in projected.sources.iter().flatten() {
            if let Some(t) = &source.service_account_token {
                let sa = pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into());
                std::fs::write(local.join(&t.path), request_token(client, pod, ns, &sa).await?)?;
            }
        }
    } else if volume.empty_dir.is_none() {
        bail!("volume {:?} is of a kind the pod runner does not support", volume.name);
    }
    Ok(local)
}

fn write_items(dir: &Path, data: impl Iterator<Item = (String, Vec<u8>)>, items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>) -> Result<()> {
    let data: BTreeMap<String, Vec<u8>> = data.collect();
    match items {
        Some(items) => {
            for item in items {
                let bytes = data.get(&item.key).ok_or_else(|| anyhow!("key {:?} is missing", item.key))?;
                let path = dir.join(&item.path);
                std::fs::create_dir_all(path.parent().unwrap_or(dir))?;
                std::fs::write(path, bytes)?;
            }
        }
        None => {
            for (key, bytes) in data {
                std::fs::write(dir.join(key), bytes)?;
            }
        }
    }
    Ok(())
}

async fn request_token(client: &Client, pod: &Pod, ns: &str, sa: &str) -> Result<String> {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(3600),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let answer = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_token_request(sa, &PostParams::default(), &request)
        .await
        .with_context(|| format!("requesting a token for service account {ns}/{sa}"))?;
    answer.status.map(|s| s.token).ok_or_else(|| anyhow!("the token request returned no token"))
}

fn pod_kubeconfig(api: &ApiServer, token_file: &Path, namespace: &str) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(&api.ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: cluster\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\nusers:\n- name: pod\n  user:\n    tokenFile: {token}\ncontexts:\n- name: pod\n  context: {{cluster: cluster, user: pod, namespace: {namespace}}}\ncurrent-context: pod\n",
        url = api.url,
        token = token_file.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_rewritten_longest_first() {
        let mounts = vec![("/etc".to_string(), PathBuf::from("/tmp/p/etc")), ("/etc/frugal".to_string(), PathBuf::from("/tmp/p/cfg"))];
        assert_eq!(rewrite_paths("/etc/frugal/trainer-config.yaml", &mounts), "/tmp/p/cfg/trainer-config.yaml");
        assert_eq!(rewrite_paths("/etc/frugal", &mounts), "/tmp/p/cfg");
        assert_eq!(rewrite_paths("/etc/hosts", &mounts), "/tmp/p/etc/hosts");
        assert_eq!(rewrite_paths("/etcetera", &mounts), "/etcetera");
        assert_eq!(rewrite_paths("relative", &mounts), "relative");
    }

    #[test]
    fn variables_expand_like_the_kubelet() {
        let env = BTreeMap::from([("A".to_string(), "1".to_string())]);
        assert_eq!(expand("x$(A)y", &env), "x1y");
        assert_eq!(expand("$(B)", &env), "$(B)");
        assert_eq!(expand("$$(A)", &env), "$(A)");
        assert_eq!(expand("cost $5", &env), "cost $5");
    }

    #[test]
    fn downward_api_fields_resolve() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "n", "annotations": {"batch.kubernetes.io/job-completion-index": "3"}},
            "spec": {"containers": [], "nodeName": "gpu-0"}
        }))
        .unwrap();
        assert_eq!(field_ref(&pod, "metadata.annotations['batch.kubernetes.io/job-completion-index']", "").unwrap(), "3");
        assert_eq!(field_ref(&pod, "status.podIP", "127.77.0.2").unwrap(), "127.77.0.2");
        assert_eq!(field_ref(&pod, "spec.nodeName", "").unwrap(), "gpu-0");
        assert!(field_ref(&pod, "status.phase", "").is_err());
    }
}
