//! frugal as users run it, on the real node: the chart's operator in a container under the
//! chart's RBAC only, trainers from the project's image, statuses patched from inside the
//! containers with their own tokens, peers found through cluster DNS, a deleted pod's SIGTERM
//! checkpoint resumed by the next attempt, a 2 × 2 data-parallel job whose checkpoint resumes as
//! 1 × 2, an int8 export and a distilled student reported from their pods, a job that continues
//! from a Hugging Face export and writes its own, a pipeline without a shared volume that loses a
//! pod and its volume and resumes from the bucket, and a leader that hands over. Every namespace
//! enforces Pod Security `restricted`.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{PersistentVolume, Pod};
use kube::api::{DeleteParams, ListParams};
use kube::{Api, ResourceExt as _};

use frugal_api::TrainingJob;
use frugal_api::v1alpha1::{
    DataSource, DataSourceType, DistillSpec, ExportSpec, FeedForward, Norm, Phase, QuantizeFormat, TeacherSpec, TextFormat, TextSource, Tokenizer,
    TokenizerFile,
};
use frugal_e2e::node::{self, REAL_NODE_LABEL, TRAINING};
use frugal_e2e::operator::Operator;
use frugal_e2e::prometheus;
use frugal_e2e::training_job::{
    apply, check_operator_log, check_trainer_log, finished_within, job_where, last_checkpoint, phase, real_cpu_job, resumed_at, step_losses,
};
use frugal_e2e::{TestContext, manifests, run};

#[path = "../../trainer/tests/support/seaweedfs.rs"]
mod seaweedfs;

/// The pod ran in a container (containerd's ID) on the node labelled as the real one.
async fn on_real_node(ctx: &TestContext, pod: &Pod) -> Result<()> {
    let (node, id) = node::placement(pod);
    let labels = Api::<k8s_openapi::api::core::v1::Node>::all(ctx.client.clone()).get(&node).await?.metadata.labels.unwrap_or_default();
    ensure!(labels.get(REAL_NODE_LABEL.0).map(String::as_str) == Some(REAL_NODE_LABEL.1), "{} ran on {node}, not the real node", pod.name_any());
    ensure!(id.starts_with("containerd://"), "{}: container {id:?} is not a containerd container", pod.name_any());
    Ok(())
}

#[tokio::test]
async fn the_quick_start_succeeds_in_a_container_under_the_charts_operator() {
    if !node::available("real-quickstart") {
        return;
    }
    run("real-quickstart", |ctx: TestContext| async move {
        manifests::install_crds(&ctx.client).await?;
        node::enforce_restricted(&ctx).await?;
        // the README's cluster steps: helm install, kubectl apply the example, kubectl get tj
        node::install_chart(&ctx, "frugal", &[])?;
        let operators = ctx.api::<Pod>().list(&ListParams::default().labels("app.kubernetes.io/instance=frugal")).await?.items;
        let operator = operators.first().context("the chart's operator pod")?;
        let image = operator.spec.as_ref().unwrap().containers[0].image.clone().unwrap_or_default();
        ensure!(image == node::operator_image(), "the operator runs {image}");
        ensure!(operator.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"), "operator {}", node::describe(operator));
        eprintln!("e2e: operator {} image {image}", node::describe(operator));

        let text = std::fs::read_to_string(frugal_e2e::repo_root().join("examples/quickstart-cpu.yaml"))?;
        let mut tj: TrainingJob = serde_saphyr::from_str(&text)?;
        // the one change: this cluster's kwok nodes would take the pod and only pretend to run it
        tj.spec.resources.node_selector.insert(REAL_NODE_LABEL.0.into(), REAL_NODE_LABEL.1.into());
        apply(&ctx, &tj).await?;
        let done = finished_within(&ctx, "quickstart", TRAINING).await?;
        let pods = node::attempt_pods(&ctx, "quickstart", 1).await?;
        let pod = pods.first().context("attempt 1 has a pod")?;
        let log = node::logs(&ctx, &pod.name_any()).await;
        ensure!(phase(&done) == Some(Phase::Succeeded), "the quick start ended {:?}: {:?}\n{log}", phase(&done), done.status);
        on_real_node(&ctx, pod).await?;
        let trainer_image = pod.spec.as_ref().unwrap().containers[0].image.clone().unwrap_or_default();
        ensure!(trainer_image == node::cpu_trainer_image(), "the trainer ran {trainer_image}");
        eprintln!("e2e: quick start Succeeded; trainer {} image {trainer_image}", node::describe(pod));
        // patched from inside the container, through the kubernetes Service, with its own token
        let status = done.status.context("no status")?;
        let progress = status.progress.context("status.progress from the trainer in the container")?;
        ensure!(progress.step > 0 && progress.loss.is_some_and(|l| l > 0.0), "progress {progress:?}");
        let quality = status.quality.context("status.quality from the trainer's evaluation")?;
        ensure!(quality.validation_loss.is_some_and(|v| v.is_finite()), "quality {quality:?}");
        ensure!(status.efficiency.is_some_and(|e| e.tokens_per_second > 0.0), "efficiency");
        // the chart's policies are in force: the operator says nothing is missing
        ensure!(!status.conditions.iter().any(|c| c.type_ == "AdmissionPoliciesMissing"), "{:?}", status.conditions);
        // a CPU job's container sees no GPU, whatever the node's runtime would show it
        let env = pod.spec.as_ref().unwrap().containers[0].env.clone().unwrap_or_default();
        let visible = env.iter().find(|e| e.name == "NVIDIA_VISIBLE_DEVICES").and_then(|e| e.value.clone());
        ensure!(visible.as_deref() == Some("void"), "NVIDIA_VISIBLE_DEVICES of the CPU job's container: {visible:?}");
        // the operator's identity creates and deletes Secrets, but may neither list nor watch them
        let operator_identity = format!("system:serviceaccount:{}:frugal-operator", ctx.namespace);
        for (verb, allowed) in [("list", false), ("watch", false), ("create", true), ("delete", true)] {
            let may = node::may(&ctx, &operator_identity, verb, "", "secrets").await?;
            eprintln!("e2e: may {operator_identity} {verb} secrets? {may}");
            ensure!(may == allowed, "{operator_identity} may {verb} secrets: {may}, expected {allowed}");
        }
        // and reads and writes its record of deleted jobs' bills (here, in the namespace it
        // watches, it manages the jobs' ConfigMaps too)
        let checks = [("get", Some("frugal-operator-billed"), true), ("update", Some("frugal-operator-billed"), true), ("create", None, true)];
        for (verb, name, allowed) in checks {
            let may = node::may_on(&ctx, &operator_identity, verb, "", "configmaps", name).await?;
            ensure!(may == allowed, "{operator_identity} may {verb} configmaps {name:?}: {may}, expected {allowed}");
        }
        Ok(())
    })
    .await;
}

/// Asks the cluster DNS server (the bridge address, as the kubelet tells pods) for `name`'s
/// IPv4 addresses: a minimal query, so the test needs no resolver configured on the host.
fn dns_a(server: &str, name: &str) -> Result<Vec<std::net::Ipv4Addr>> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    socket.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend(label.as_bytes());
    }
    q.extend([0, 0, 1, 0, 1]);
    socket.send_to(&q, (server, 53))?;
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf)?;
    let r = &buf[..n];
    let answers = u16::from_be_bytes([r[6], r[7]]);
    let mut at = q.len();
    let mut out = Vec::new();
    for _ in 0..answers {
        // a name (a pointer or labels), type, class, ttl, length, data
        if r[at] & 0xc0 == 0xc0 {
            at += 2;
        } else {
            while r[at] != 0 {
                at += 1 + r[at] as usize;
            }
            at += 1;
        }
        let kind = u16::from_be_bytes([r[at], r[at + 1]]);
        let len = u16::from_be_bytes([r[at + 8], r[at + 9]]) as usize;
        at += 10;
        if kind == 1 && len == 4 {
            out.push(std::net::Ipv4Addr::new(r[at], r[at + 1], r[at + 2], r[at + 3]));
        }
        at += len;
    }
    Ok(out)
}

#[tokio::test]
async fn a_two_pod_pipeline_finds_its_peer_through_cluster_dns() {
    if !node::available("real-pipeline") {
        return;
    }
    run("real-pipeline", |ctx: TestContext| async move {
        manifests::install_crds(&ctx.client).await?;
        node::enforce_restricted(&ctx).await?;
        let pv = node::shared_claim(&ctx, "ckpt").await?;
        let _operator = Operator::start(&ctx.namespace, &[])?;
        apply(&ctx, &real_cpu_job("lm", 20, Some("ckpt"), 2)).await?;
        // while both stages run, the second's stable name resolves to its pod's address
        let second = node::pod_logging(&ctx, "lm", 1, "\"event\":", TRAINING).await?;
        let pods = node::attempt_pods(&ctx, "lm", 1).await?;
        ensure!(pods.len() == 2, "{} pods", pods.len());
        let peer = pods.iter().find(|p| p.name_any().contains("-1-")).or(pods.last()).context("stage 1's pod")?;
        let spec = peer.spec.as_ref().unwrap();
        let host = format!(
            "{}.{}.{}.svc.cluster.local",
            spec.hostname.clone().unwrap_or_default(),
            spec.subdomain.clone().unwrap_or_default(),
            ctx.namespace
        );
        let ip = peer.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default();
        // the cluster DNS server the kubelet gives pods (e2e/cluster/node/lib.sh); on kind,
        // CoreDNS's pod, which e2e/kind/up routes to; FRUGAL_CLUSTER_DNS=none skips the query
        let server = std::env::var("FRUGAL_CLUSTER_DNS").unwrap_or_else(|_| "10.89.0.1".into());
        if server != "none" {
            let resolved = dns_a(&server, &host)?;
            eprintln!("e2e: {host} resolves to {resolved:?} (pod IP {ip}); first logging pod {}", second.name_any());
            ensure!(resolved.iter().any(|a| a.to_string() == ip), "{host} resolved to {resolved:?}, the pod's IP is {ip}");
        }
        // nothing wrote the peers into the host's /etc/hosts: the trainers resolved them by DNS
        let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        ensure!(!hosts.contains(&ctx.namespace), "/etc/hosts names the test's pods:\n{hosts}");

        let done = finished_within(&ctx, "lm", TRAINING).await?;
        let mut logs = Vec::new();
        for p in &pods {
            on_real_node(&ctx, p).await?;
            logs.push(format!("{}:\n{}", node::describe(p), node::logs(&ctx, &p.name_any()).await));
        }
        ensure!(phase(&done) == Some(Phase::Succeeded), "ended {:?}; logs:\n{}", phase(&done), logs.join("\n"));
        ensure!(logs.iter().any(|l| l.contains("\"step\":20")), "no stage reached step 20:\n{}", logs.join("\n"));
        let status = done.status.context("no status")?;
        ensure!(
            status.progress.as_ref().is_some_and(|p| p.step == 20),
            "status.progress from the last stage's container: {:?}; logs:\n{}",
            status.progress,
            logs.join("\n")
        );
        Api::<PersistentVolume>::all(ctx.client.clone()).delete(&pv, &DeleteParams::default()).await.ok();
        Ok(())
    })
    .await;
}

/// Data parallelism as users run it: 2 replicas × 2 stages in four containers, the replicas'
/// rings and the pipelines' links between pods found through cluster DNS, the status from the
/// first replica; then a second job on the same checkpoint claim, 1 replica × 2 stages, resumes
/// the first's checkpoint (naming its directory: each job has its own by default).
#[tokio::test]
async fn a_two_by_two_job_trains_in_containers_and_its_checkpoint_resumes_as_one_by_two() {
    if !node::available("real-dp") {
        return;
    }
    run("real-dp", |ctx: TestContext| async move {
        manifests::install_crds(&ctx.client).await?;
        node::enforce_restricted(&ctx).await?;
        let pv = node::shared_claim(&ctx, "ckpt").await?;
        let _operator = Operator::start(&ctx.namespace, &[])?;
        let replicated = |name: &str, steps: i64, replicas: i32| {
            let mut tj = real_cpu_job(name, steps, Some("ckpt"), 2);
            tj.spec.parallelism.data_parallel = replicas;
            tj.spec.parallelism.shard_optimizer_state = replicas > 1;
            tj.spec.training.batch_size = 8;
            tj
        };
        apply(&ctx, &replicated("dp", 20, 2)).await?;
        let done = finished_within(&ctx, "dp", TRAINING).await?;
        let pods = node::attempt_pods(&ctx, "dp", 1).await?;
        let mut logs = Vec::new();
        for p in &pods {
            logs.push(format!("{}:\n{}", node::describe(p), node::logs(&ctx, &p.name_any()).await));
        }
        ensure!(phase(&done) == Some(Phase::Succeeded), "ended {:?}; logs:\n{}", phase(&done), logs.join("\n"));
        ensure!(pods.len() == 4, "{} pods, not 2 replicas × 2 stages", pods.len());
        for p in &pods {
            on_real_node(&ctx, p).await?;
        }
        let status = done.status.clone().context("no status")?;
        let plan = status.plan.clone().context("no plan in the status")?;
        ensure!((plan.pods, plan.replicas) == (4, 2), "plan: {} pods, {} replicas", plan.pods, plan.replicas);
        ensure!(plan.communication_bytes_per_step > 0, "the plan counts no communication");
        ensure!(status.progress.as_ref().is_some_and(|p| p.step == 20), "status.progress: {:?}", status.progress);
        ensure!(status.quality.as_ref().is_some_and(|q| q.validation_loss.is_some_and(f64::is_finite)), "status.quality: {:?}", status.quality);
        // the reporting stage (replica 0's last) measured its share of the ring every step
        ensure!(logs.iter().any(|l| l.contains("\"allreduce_seconds\"")), "no step logged its all-reduce:\n{}", logs.join("\n"));
        ensure!(logs.iter().any(|l| l.contains("\"replicas\":2")), "no start event names 2 replicas:\n{}", logs.join("\n"));

        // One replica of the same two stages, on the same claim: it resumes at step 20 from the
        // first job's directory, which it names.
        let mut one = replicated("one", 24, 1);
        one.spec.checkpoint.sub_path = Some(format!("{}/dp", ctx.namespace));
        apply(&ctx, &one).await?;
        let done = finished_within(&ctx, "one", TRAINING).await?;
        let pods = node::attempt_pods(&ctx, "one", 1).await?;
        let mut logs = Vec::new();
        for p in &pods {
            logs.push(node::logs(&ctx, &p.name_any()).await);
        }
        ensure!(phase(&done) == Some(Phase::Succeeded), "1 × 2 ended {:?}; logs:\n{}", phase(&done), logs.join("\n"));
        ensure!(pods.len() == 2, "{} pods, not 1 replica × 2 stages", pods.len());
        let resumed = logs.iter().find_map(|l| resumed_at(l)).with_context(|| format!("1 × 2 did not resume:\n{}", logs.join("\n")))?;
        ensure!(resumed == 20, "1 × 2 resumed at step {resumed}, the 2 × 2 job ended at 20");
        ensure!(done.status.as_ref().and_then(|s| s.progress.as_ref()).is_some_and(|p| p.step == 24), "1 × 2 did not reach step 24");
        Api::<PersistentVolume>::all(ctx.client.clone()).delete(&pv, &DeleteParams::default()).await.ok();
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_quantized_teacher_and_its_distilled_student_report_their_quality_from_containers() {
    if !node::available("real-export") {
        return;
    }
    run("real-export", |ctx: TestContext| async move {
        manifests::install_crds(&ctx.client).await?;
        node::enforce_restricted(&ctx).await?;
        let pv = node::shared_claim(&ctx, "teacher").await?;
        let _operator = Operator::start(&ctx.namespace, &[])?;
        // The teacher trains on its claim and exports int8 weights after its last step.
        let mut teacher = real_cpu_job("teacher", 30, Some("teacher"), 1);
        teacher.spec.export = Some(ExportSpec { quantize: Some(QuantizeFormat::Int8), calibration_batches: 2, ..Default::default() });
        apply(&ctx, &teacher).await?;
        let done = finished_within(&ctx, "teacher", TRAINING).await?;
        let pods = node::attempt_pods(&ctx, "teacher", 1).await?;
        let pod = pods.first().context("the teacher's pod")?;
        let log = node::logs(&ctx, &pod.name_any()).await;
        ensure!(phase(&done) == Some(Phase::Succeeded), "the teacher ended {:?}: {:?}\n{log}", phase(&done), done.status);
        on_real_node(&ctx, pod).await?;
        let quality = done.status.as_ref().and_then(|s| s.quality.clone()).context("no status.quality")?;
        let q = quality.quantized.clone().with_context(|| format!("no status.quality.quantized:\n{log}"))?;
        eprintln!("e2e: int8 export {q:?}");
        ensure!(q.format == "int8" && q.step == 30, "export {q:?}");
        ensure!(q.bits_per_byte.is_some_and(f64::is_finite) && q.bits_per_byte_delta.is_some_and(f64::is_finite), "bits per byte {q:?}");
        ensure!(
            q.round_to_nearest.bits_per_byte.is_some() && q.unquantized.bits_per_byte.is_some(),
            "round-to-nearest and unquantized figures {q:?}"
        );
        ensure!(
            q.weight_bytes > 0 && q.weight_bytes < q.unquantized_weight_bytes,
            "weight bytes {} of {}",
            q.weight_bytes,
            q.unquantized_weight_bytes
        );
        ensure!(q.tokens_per_second > 0.0 && q.unquantized_tokens_per_second > 0.0, "tokens/s {q:?}");
        ensure!(q.path.ends_with("int8.safetensors"), "path {}", q.path);
        // the unquantized figures are the checkpoint's own: the job's last evaluation is of it
        ensure!(quality.step == 30, "quality step {}", quality.step);

        // A smaller student learns from the teacher's checkpoint, mounted from the claim.
        let mut student = real_cpu_job("student", 20, None, 1);
        if let Some(custom) = student.spec.model.custom.as_mut() {
            custom.layers = 2;
        }
        student.spec.distill = Some(DistillSpec {
            // the teacher's checkpoints are under its own directory of the claim
            teacher: TeacherSpec { model: teacher.spec.model.clone(), checkpoint: format!("/teacher/{}/teacher", ctx.namespace) },
            temperature: 2.0,
            soft_weight: 0.5,
        });
        let overrides = student.spec.pod_template.get_or_insert_with(Default::default);
        overrides.volumes.push(serde_json::from_value(
            serde_json::json!({"name": "teacher", "persistentVolumeClaim": {"claimName": "teacher", "readOnly": true}}),
        )?);
        overrides.volume_mounts.push(serde_json::from_value(serde_json::json!({"name": "teacher", "mountPath": "/teacher", "readOnly": true}))?);
        apply(&ctx, &student).await?;
        let done = finished_within(&ctx, "student", TRAINING).await?;
        let pods = node::attempt_pods(&ctx, "student", 1).await?;
        let pod = pods.first().context("the student's pod")?;
        let log = node::logs(&ctx, &pod.name_any()).await;
        ensure!(phase(&done) == Some(Phase::Succeeded), "the student ended {:?}: {:?}\n{log}", phase(&done), done.status);
        let quality = done.status.as_ref().and_then(|s| s.quality.clone()).context("no status.quality")?;
        let d = quality.distillation.clone().with_context(|| format!("no status.quality.distillation:\n{log}"))?;
        eprintln!("e2e: distillation {d:?}");
        ensure!(d.teacher_checkpoint.contains("step-"), "teacher checkpoint {}", d.teacher_checkpoint);
        ensure!(d.teacher.bits_per_byte.is_some_and(f64::is_finite), "teacher figures {d:?}");
        ensure!(d.bits_per_byte_delta.is_some_and(f64::is_finite), "no student − teacher delta {d:?}");
        ensure!(d.teacher_tokens_per_second > 0.0 && d.student_tokens_per_second > 0.0, "tokens/s {d:?}");
        ensure!(d.teacher_parameters > 0, "teacher parameters {d:?}");
        Api::<PersistentVolume>::all(ctx.client.clone()).delete(&pv, &DeleteParams::default()).await.ok();
        Ok(())
    })
    .await;
}

/// Continued pretraining as users run it: a job of Llama's block trains as two pods on a JSONL
/// corpus and writes its final checkpoint in the Hugging Face layout onto its claim; a second
/// job starts from that export (`spec.model.init`, read from the same claim) with the export's
/// own tokenizer (`data.tokenizer: file`), begins at the first job's loss rather than a fresh
/// model's, and writes its own export, whose path its status names; a third whose shape differs
/// from the export's is refused, its condition naming the field and both values.
#[tokio::test]
async fn a_job_continues_from_a_hugging_face_model_and_exports_its_own() {
    if !node::available("real-hf") {
        return;
    }
    run("real-hf", |ctx: TestContext| async move {
        manifests::install_crds(&ctx.client).await?;
        node::enforce_restricted(&ctx).await?;
        let pv = node::shared_claim(&ctx, "models").await?;
        // the claim's directory on this machine, where the real node's hostPath volume is
        let host = std::env::temp_dir().join("frugal-e2e-volumes").join(&pv);
        // the corpus as datasets ship it: JSONL, a paragraph of the repository's text a line
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/tinyshakespeare.txt"))?;
        let lines: Vec<String> = text.split("\n\n").take(2000).map(|p| serde_json::json!({ "text": p }).to_string()).collect();
        std::fs::write(host.join("corpus.jsonl"), lines.join("\n") + "\n")?;
        let operator = Operator::start(&ctx.namespace, &[])?;
        let llama = |name: &str, steps: i64, stages: i32| {
            let mut tj = real_cpu_job(name, steps, Some("models"), stages);
            let shape = tj.spec.model.custom.as_mut().expect("a custom shape");
            (shape.norm, shape.feed_forward, shape.bias) = (Norm::RmsNorm, FeedForward::Swiglu, false);
            tj.spec.data.source = DataSource {
                type_: DataSourceType::Text,
                synthetic: None,
                text: Some(TextSource { path: "/checkpoints/corpus.jsonl".into(), format: TextFormat::Jsonl, field: None }),
                shards: None,
            };
            tj.spec.export = Some(ExportSpec { hugging_face: true, calibration_batches: 4, ..Default::default() });
            tj
        };
        // The export's files, read where the pod wrote them: its architecture.
        let exported = |done: &TrainingJob, step: i64| -> Result<String> {
            let hf = done.status.as_ref().and_then(|s| s.quality.as_ref()?.hugging_face.clone());
            let hf = hf.with_context(|| format!("{} has no status.quality.huggingFace: {:?}", done.name_any(), done.status))?;
            ensure!(hf.step == step && hf.weight_bytes > 0, "export {hf:?}, the job ended at step {step}");
            let relative = hf.path.strip_prefix("/checkpoints/").with_context(|| format!("export path {} is not on the claim", hf.path))?;
            let dir = host.join(relative);
            for file in ["model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json"] {
                ensure!(dir.join(file).is_file(), "{} has no {file}", dir.display());
            }
            let config: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)?;
            let architecture = config["architectures"][0].as_str().unwrap_or_default();
            ensure!(architecture == hf.architecture, "config.json names {architecture}, the status {}", hf.architecture);
            eprintln!("e2e: {} exported step {} as {architecture} to {}", done.name_any(), hf.step, hf.path);
            Ok(hf.path)
        };
        let run_to_end = |name: &'static str| {
            let ctx = ctx.clone();
            async move {
                let done = finished_within(&ctx, name, TRAINING).await?;
                let mut logs = String::new();
                for p in node::attempt_pods(&ctx, name, 1).await? {
                    on_real_node(&ctx, &p).await?;
                    logs += &node::logs(&ctx, &p.name_any()).await;
                }
                anyhow::Ok((done, logs))
            }
        };

        apply(&ctx, &llama("base", 40, 2)).await?;
        let (base, logs) = run_to_end("base").await?;
        ensure!(phase(&base) == Some(Phase::Succeeded), "base ended {:?}: {:?}\n{logs}", phase(&base), base.status);
        let path = exported(&base, 40)?;
        // every line of the trainer's output and the operator's log, as a collector parses them
        let lines = check_trainer_log(&logs, "base", &ctx.namespace)?;
        let passes = check_operator_log(&operator.log(), &ctx.namespace, "base")?;
        ensure!(passes > 0, "no line of the operator's log names {}/base", ctx.namespace);
        eprintln!("e2e: {lines} trainer log lines and {passes} of the operator's name {}/base", ctx.namespace);
        let base_losses = step_losses(&logs);
        let (fresh, trained) = (base_losses.first().context("base logged no step")?.1, base_losses.last().context("base logged no step")?.1);

        let mut continued = llama("continued", 10, 2);
        continued.spec.model.init = Some(path.clone());
        continued.spec.data.tokenizer = Tokenizer::File;
        continued.spec.data.tokenizer_file = Some(TokenizerFile { path: format!("{path}/tokenizer.json"), end_of_text: None });
        let mut other_shape = llama("other-shape", 10, 1);
        other_shape.spec.model.init = Some(path.clone());
        other_shape.spec.model.custom.as_mut().expect("a custom shape").d_model = 64;
        apply(&ctx, &continued).await?;
        apply(&ctx, &other_shape).await?;

        let (done, logs) = run_to_end("continued").await?;
        ensure!(phase(&done) == Some(Phase::Succeeded), "continued ended {:?}: {:?}\n{logs}", phase(&done), done.status);
        let first = step_losses(&logs).first().context("continued logged no step")?.1;
        eprintln!("e2e: a fresh model's first loss {fresh:.4}, base's last {trained:.4}, continued's first {first:.4}");
        ensure!(
            (first - trained).abs() < (first - fresh).abs(),
            "continued started at loss {first}, nearer a fresh model's {fresh} than the init model's {trained}"
        );
        let own = exported(&done, 10)?;
        ensure!(own != path && own.contains("/continued/"), "continued exported to {own}, not its own directory");

        let refused = finished_within(&ctx, "other-shape", TRAINING).await?;
        ensure!(phase(&refused) == Some(Phase::Failed), "a dModel of 64 from a 32-wide model ended {:?}", phase(&refused));
        let said = refused.status.iter().flat_map(|s| &s.conditions).find(|c| c.reason == "ConfigurationError").map(|c| c.message.clone());
        let said = said.with_context(|| format!("no ConfigurationError condition: {:?}", refused.status))?;
        ensure!(
            said.contains("dModel") && said.contains("64") && said.contains("32"),
            "the condition does not name the field and both values: {said}"
        );
        eprintln!("e2e: other-shape refused: {said}");
        Api::<PersistentVolume>::all(ctx.client.clone()).delete(&pv, &DeleteParams::default()).await.ok();
        Ok(())
    })
    .await;
}

/// Scrapes the running trainer `pod` twice, two seconds apart, on its `metrics` port (as the
/// chart's PodMonitor does, with the namespace and pod as target labels), and the operator
/// once; Prometheus's evaluator then answers every panel of the chart's dashboard but the spend
/// ones (billing.rs evaluates those under a budget) with data, the trainer's tokens/s, MFU and
/// loss among them, and fires none of the chart's alerts.
async fn the_dashboard_answers_from_a_running_trainer(ctx: &TestContext, operator: &Operator, pod: &Pod) -> Result<()> {
    let pod = ctx.api::<Pod>().get(&pod.name_any()).await?;
    let ip: std::net::IpAddr = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()).context("the trainer pod has no IP")?.parse()?;
    let container = &pod.spec.as_ref().context("no spec")?.containers[0];
    let port = container.ports.iter().flatten().find(|p| p.name.as_deref() == Some("metrics")).context("no metrics port")?.container_port;
    let addr = std::net::SocketAddr::new(ip, u16::try_from(port)?);
    let earlier = prometheus::scrape(addr)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = prometheus::scrape(addr)?;
    let step = |e: &str| prometheus::samples(e).map(|s| prometheus::sum(&s, "frugal_trainer_step", &[]));
    ensure!(step(&later)? > step(&earlier)?, "the trainer's step did not move in 2 s:\n{later}");
    let from_operator = operator.scrape().await?;
    let name = pod.name_any();
    let trainer = prometheus::Scraped { earlier: Some(&earlier), later: &later, target: vec![("namespace", &ctx.namespace), ("pod", &name)] };
    // a CPU job under no budget bills nothing: the spend panels are billing.rs's to evaluate
    let money = |q: &String| frugal_api::promql::frugal_series(q).iter().any(|n| n.starts_with("frugal_budget_") || n.starts_with("frugal_billed_"));
    let panels: Vec<String> = prometheus::dashboard_queries()?.into_iter().filter(|q| !money(q)).collect();
    prometheus::evaluate(&[trainer, prometheus::Scraped::once(&from_operator)], &panels, &[])?;
    eprintln!("e2e: {} dashboard panels (the trainer's and the operator's own) gave data from the two scrapes; no alert fired", panels.len());
    Ok(())
}

#[tokio::test]
async fn a_deleted_pod_checkpoints_on_sigterm_and_the_next_attempt_resumes_from_it() {
    if !node::available("real-sigterm") {
        return;
    }
    run("real-sigterm", |ctx: TestContext| async move {
        manifests::install_crds(&ctx.client).await?;
        node::enforce_restricted(&ctx).await?;
        let pv = node::shared_claim(&ctx, "ckpt").await?;
        let operator = Operator::start(&ctx.namespace, &["--termination-grace-seconds", "60"])?;
        let steps = 5000;
        let mut tj = real_cpu_job("lm", steps, Some("ckpt"), 1);
        // checkpoints only at the end and on SIGTERM: the one attempt 2 resumes from is the
        // SIGTERM one
        tj.spec.training.checkpoint_interval = 100_000;
        apply(&ctx, &tj).await?;
        let first = node::pod_logging(&ctx, "lm", 1, "\"event\":\"step\"", TRAINING).await?;
        let name = first.name_any();
        // how far it is and when it will end, as `kubectl get tj` shows them
        let reported = job_where(&ctx, "lm", "an expected completion time", |tj| {
            tj.status.as_ref().and_then(|s| s.progress.as_ref()).is_some_and(|p| p.estimated_completion_time.is_some())
        })
        .await?;
        let progress = reported.status.and_then(|s| s.progress).context("no status.progress")?;
        let (percent, remaining) =
            (progress.percent.context("no progress.percent")?, progress.estimated_remaining_seconds.context("no seconds left")?);
        ensure!((0..100).contains(&percent) && remaining > 0, "step {} of {steps}: {percent}%, {remaining} s left", progress.step);
        let table = node::kubectl(&["get", "tj", "lm", "-n", &ctx.namespace])?;
        eprintln!("e2e: kubectl get tj\n{table}");
        let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
        ensure!(header.contains(&"DONE%") && header.contains(&"ETA"), "kubectl get tj has no DONE% and ETA columns:\n{table}");
        the_dashboard_answers_from_a_running_trainer(&ctx, &operator, &first).await?;
        let log = node::follow_logs(&ctx, &name);
        // the kubelet delivers SIGTERM; the trainer commits a checkpoint within the grace period
        ctx.api::<Pod>().delete(&name, &DeleteParams::default()).await?;
        let stopped = tokio::time::timeout(Duration::from_secs(90), log).await.context("the deleted pod's log did not end")??;
        let checkpoint = last_checkpoint(&stopped).with_context(|| format!("attempt 1 wrote no checkpoint on SIGTERM:\n{stopped}"))?;
        ensure!(stopped.contains("signal"), "attempt 1 did not stop on the signal:\n{stopped}");
        eprintln!("e2e: {name} checkpointed at step {checkpoint} on SIGTERM");

        let done = finished_within(&ctx, "lm", TRAINING).await?;
        let second = node::attempt_pods(&ctx, "lm", 2).await?;
        let pod = second.first().context("attempt 2 has a pod")?;
        let log = node::logs(&ctx, &pod.name_any()).await;
        ensure!(phase(&done) == Some(Phase::Succeeded), "ended {:?}; attempt 2:\n{log}", phase(&done));
        let resumed = resumed_at(&log).with_context(|| format!("attempt 2 did not resume:\n{log}"))?;
        ensure!(resumed == checkpoint, "attempt 2 resumed at {resumed}, the SIGTERM checkpoint was at {checkpoint}");
        ensure!(log.contains(&format!("\"step\":{steps}")), "attempt 2 did not finish:\n{log}");
        on_real_node(&ctx, pod).await?;
        Api::<PersistentVolume>::all(ctx.client.clone()).delete(&pv, &DeleteParams::default()).await.ok();
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn the_standby_operator_takes_over_when_the_leader_is_deleted() {
    if !node::available("real-leader") {
        return;
    }
    run("real-leader", |ctx: TestContext| async move {
        manifests::install_crds(&ctx.client).await?;
        node::enforce_restricted(&ctx).await?;
        node::install_chart(&ctx, "frugal", &["replicaCount=2"])?;
        let leases: Api<Lease> = ctx.api();
        let holder = |l: &Lease| l.spec.as_ref().and_then(|s| s.holder_identity.clone()).filter(|h| !h.is_empty());
        let lease =
            frugal_e2e::wait::for_object(&leases, "frugal-operator", "a leader", |l: Option<&Lease>| l.is_some_and(|l| holder(l).is_some())).await?;
        let leader = holder(&lease).unwrap();
        apply(&ctx, &real_cpu_job("lm", 6000, None, 1)).await?;
        job_where(&ctx, "lm", "phase Running", |tj| phase(tj) == Some(Phase::Running)).await?;

        ctx.api::<Pod>().delete(&leader, &DeleteParams::default()).await?;
        let old = leader.clone();
        let lease = frugal_e2e::wait::for_object(&leases, "frugal-operator", "a new leader", move |l: Option<&Lease>| {
            l.is_some_and(|l| holder(l).is_some_and(|h| h != old))
        })
        .await?;
        let new_leader = holder(&lease).unwrap();
        eprintln!("e2e: leader {leader} deleted; {new_leader} took over");

        let done = finished_within(&ctx, "lm", TRAINING).await?;
        let status = done.status.clone().context("no status")?;
        ensure!(phase(&done) == Some(Phase::Succeeded), "ended {:?}: {status:?}", phase(&done));
        // not lost, not started twice: one attempt, one Job
        ensure!(status.attempt == Some(1) && status.restarts == Some(0), "attempt {:?}, restarts {:?}", status.attempt, status.restarts);
        let jobs = ctx.api::<Job>().list(&ListParams::default().labels("frugal.dev/training-job=lm")).await?.items;
        ensure!(jobs.len() == 1, "{} Jobs: {:?}", jobs.len(), jobs.iter().map(|j| j.name_any()).collect::<Vec<_>>());
        let ready = done.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Succeeded").cloned());
        ensure!(ready.is_some_and(|c| c.status == "True"), "Succeeded condition");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn an_image_that_cannot_be_pulled_is_named_and_the_attempt_stops_at_the_startup_deadline() {
    if !node::available("real-image-pull") {
        return;
    }
    run("real-image-pull", |ctx: TestContext| async move {
        manifests::install_crds(&ctx.client).await?;
        node::enforce_restricted(&ctx).await?;
        let _operator = Operator::start(&ctx.namespace, &[])?;
        let image = "registry.invalid/frugal/trainer:missing";
        let mut tj = real_cpu_job("lm", 10, None, 1);
        tj.spec.image = Some(image.into());
        tj.spec.run_policy.backoff_limit = 0;
        tj.spec.run_policy.startup_deadline_seconds = 30;
        let applied = Instant::now();
        apply(&ctx, &tj).await?;
        let named = job_where(&ctx, "lm", "a Ready condition naming the image", |tj| {
            frugal_e2e::training_job::condition(tj, "Ready").is_some_and(|c| c.reason == "ImagePullFailed")
        })
        .await?;
        let after = applied.elapsed();
        let ready = frugal_e2e::training_job::condition(&named, "Ready").unwrap();
        eprintln!("e2e: after {after:?}: Ready={} {}: {}", ready.status, ready.reason, ready.message);
        ensure!(after < Duration::from_secs(60), "named after {after:?}");
        ensure!(ready.message.contains(image), "the message does not name the image: {}", ready.message);
        ensure!(ready.message.contains("ErrImagePull") || ready.message.contains("ImagePullBackOff"), "{}", ready.message);
        ensure!(phase(&named) == Some(Phase::Pending), "phase {:?}", phase(&named));

        // not Starting forever: stopped at the deadline, counted, and with backoffLimit 0, Failed
        let done = finished_within(&ctx, "lm", Duration::from_secs(120)).await?;
        let status = done.status.as_ref().unwrap();
        let ready = frugal_e2e::training_job::condition(&done, "Ready").unwrap();
        eprintln!("e2e: ended {:?} {}: {}", phase(&done), ready.reason, ready.message);
        ensure!(phase(&done) == Some(Phase::Failed) && status.restarts == Some(1), "{status:?}");
        ensure!(ready.message.contains("startupDeadlineSeconds (30s)"), "{}", ready.message);
        let pods = node::attempt_pods(&ctx, "lm", 1).await?;
        ensure!(pods.iter().all(|p| p.metadata.deletion_timestamp.is_some()) || pods.is_empty(), "attempt 1's pods are not released");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_pod_that_cannot_be_scheduled_says_why() {
    run("unschedulable", |ctx: TestContext| async move {
        manifests::install_crds(&ctx.client).await?;
        let _operator = Operator::start(&ctx.namespace, &[])?;
        let mut tj = real_cpu_job("lm", 10, None, 1);
        // more CPUs than any node has
        tj.spec.resources.cpu = Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity("500".into()));
        tj.spec.resources.node_selector.remove(REAL_NODE_LABEL.0);
        apply(&ctx, &tj).await?;
        let named = job_where(&ctx, "lm", "a Ready condition with the scheduler's reason", |tj| {
            frugal_e2e::training_job::condition(tj, "Ready").is_some_and(|c| c.reason == "Unschedulable")
        })
        .await?;
        let ready = frugal_e2e::training_job::condition(&named, "Ready").unwrap();
        eprintln!("e2e: Ready={} {}: {}", ready.status, ready.reason, ready.message);
        ensure!(ready.message.contains("Insufficient cpu"), "{}", ready.message);
        Ok(())
    })
    .await;
}

/// Connects to `prefix` of the test's bucket with its keys, when called: on a blocking thread,
/// as the store's client runs a runtime of its own.
fn opener(s3: &seaweedfs::SeaweedFs, prefix: &str) -> impl FnOnce() -> Result<frugal_api::store::Store> + Send + 'static {
    let spec = s3.spec(prefix);
    let keys = [
        ("AWS_ACCESS_KEY_ID".to_string(), seaweedfs::ACCESS_KEY.to_string()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), seaweedfs::SECRET_KEY.to_string()),
    ];
    move || frugal_api::store::Location::of(seaweedfs::FIELD, &spec).and_then(|l| l.open_with(keys)).map_err(anyhow::Error::msg)
}

/// Downloads every object under `prefix` of the test's bucket into `dir` (by its name under the
/// prefix), off the test's runtime; returns the names.
async fn download(s3: &seaweedfs::SeaweedFs, prefix: &str, dir: &std::path::Path) -> Result<Vec<String>> {
    let open = opener(s3, prefix);
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<Vec<String>> {
        let store = open()?;
        std::fs::create_dir_all(&dir)?;
        let names = store.list("")?;
        for name in &names {
            store.get_file(name, &dir.join(name))?;
        }
        Ok(names)
    })
    .await?
}

/// What `transformers` (the project venv's python, offline) makes of the model directory `dir`:
/// its architecture, and whether its logits on a few tokens are finite.
fn transformers_loads(dir: &std::path::Path) -> Result<String> {
    let venv = std::env::var_os("FRUGAL_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv"));
    let script = "import sys, torch\nfrom transformers import AutoModelForCausalLM\nm = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()\nwith torch.no_grad():\n    l = m(torch.arange(8).unsqueeze(0)).logits\nprint(type(m).__name__, tuple(l.shape), bool(torch.isfinite(l).all()))";
    let out = std::process::Command::new(venv.join("bin/python"))
        .args(["-c", script])
        .arg(dir)
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .output()
        .context("the venv's python (make test installs transformers)")?;
    ensure!(out.status.success(), "transformers did not load {}:\n{}", dir.display(), String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The steps committed under `prefix` of the test's bucket (those with a manifest), oldest
/// first. The store's client (a runtime of its own) lives and goes off the test's runtime.
async fn committed_steps(s3: &seaweedfs::SeaweedFs, prefix: &str) -> Result<Vec<i64>> {
    let open = opener(s3, prefix);
    let names = tokio::task::spawn_blocking(move || -> Result<Vec<String>> { Ok(open()?.list("")?) }).await??;
    let mut steps: Vec<i64> =
        names.iter().filter_map(|n| n.strip_suffix("/MANIFEST.json")?.rsplit('/').next()?.strip_prefix("step-")?.parse().ok()).collect();
    steps.sort_unstable();
    Ok(steps)
}

/// A job with a wrong secret key fails before training with a ConfigurationError in the store's
/// words. A two-stage pipeline with no claim, its checkpoints in a bucket (SeaweedFS on this
/// machine, reached from the node's pods): each pod's checkpoint directory is an emptyDir of its own, the
/// first stage commits each step in the bucket once both parts are there, and the status names
/// it. The test force-deletes the first stage's pod (no SIGTERM checkpoint; its emptyDir goes
/// with it), and the next attempt's new pods, with empty directories, resume from the bucket at
/// the newest committed step.
#[tokio::test]
async fn a_pipeline_that_loses_a_pod_and_its_volume_resumes_from_the_bucket() {
    if !node::available("real-bucket") {
        return;
    }
    let Ok(host) = std::env::var("FRUGAL_HOST_ADDRESS") else {
        eprintln!("skipping real-bucket: no FRUGAL_HOST_ADDRESS (scripts/e2e.sh sets it from the cluster's host-address file)");
        return;
    };
    run("real-bucket", |ctx: TestContext| async move {
        let server = tokio::task::spawn_blocking(move || seaweedfs::SeaweedFs::start_on("real-bucket", "lm-checkpoints", &host)).await?;
        let Some(s3) = server else { return Ok(()) };
        manifests::install_crds(&ctx.client).await?;
        node::enforce_restricted(&ctx).await?;
        // the bucket's keys, as a Secret the job names
        let keys = |name: &str, secret: &str| {
            serde_json::from_value::<k8s_openapi::api::core::v1::Secret>(serde_json::json!({
                "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
                "stringData": {"AWS_ACCESS_KEY_ID": seaweedfs::ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": secret},
            }))
        };
        ctx.api::<k8s_openapi::api::core::v1::Secret>().create(&Default::default(), &keys("store-keys", seaweedfs::SECRET_KEY)?).await?;
        let _operator = Operator::start(&ctx.namespace, &[])?;
        // A wrong secret key: refused before training, in the store's words, the key never shown.
        ctx.api::<k8s_openapi::api::core::v1::Secret>().create(&Default::default(), &keys("wrong-keys", "not-the-secret-key")?).await?;
        let mut wrong = real_cpu_job("wrong-key", 100, None, 1);
        let mut wrong_store = s3.spec("team/wrong");
        wrong_store.credentials_secret = Some("wrong-keys".into());
        wrong.spec.checkpoint.store = Some(wrong_store);
        apply(&ctx, &wrong).await?;
        let steps = 3000;
        let mut tj = real_cpu_job("lm", steps, None, 2);
        let mut store = s3.spec("team/lm");
        store.credentials_secret = Some("store-keys".into());
        tj.spec.checkpoint.store = Some(store.clone());
        tj.spec.training.checkpoint_interval = 50;
        // the final model in the Hugging Face layout, into the same bucket: the reporting stage
        // holds only its own part of the final step, and takes the step whole from the bucket
        let mut exports = store;
        exports.uri = "s3://lm-checkpoints/team/lm-export".into();
        tj.spec.export =
            Some(frugal_api::v1alpha1::ExportSpec { hugging_face: true, calibration_batches: 1, store: Some(exports), ..Default::default() });
        apply(&ctx, &tj).await?;

        let refused = finished_within(&ctx, "wrong-key", TRAINING).await?;
        ensure!(phase(&refused) == Some(Phase::Failed), "a job with a wrong key ended {:?}", phase(&refused));
        let said = refused.status.iter().flat_map(|s| &s.conditions).find(|c| c.reason == "ConfigurationError").map(|c| c.message.clone());
        let said = said.with_context(|| format!("no ConfigurationError condition: {:?}", refused.status))?;
        eprintln!("e2e: wrong-key refused: {said}");
        ensure!(
            said.contains("spec.checkpoint.store") && said.contains("SignatureDoesNotMatch") && !said.contains("not-the-secret-key"),
            "the condition does not name the field and the store's words, or shows the key: {said}"
        );

        // The status names a step in the bucket, which the first stage committed and the last
        // (reporting) stage was told of.
        let named = job_where(&ctx, "lm", "status.checkpoint in the bucket", |tj| {
            tj.status.as_ref().and_then(|s| s.checkpoint.as_ref()).is_some_and(|c| c.path.starts_with("s3://lm-checkpoints/team/lm/step-"))
        })
        .await?;
        let named = named.status.and_then(|s| s.checkpoint).context("no status.checkpoint")?;
        eprintln!("e2e: status.checkpoint = step {} at {}", named.step, named.path);
        let first = node::attempt_pods(&ctx, "lm", 1).await?;
        ensure!(first.len() == 2, "attempt 1 has {} pods, not 2 stages", first.len());
        for p in &first {
            on_real_node(&ctx, p).await?;
            let claims = p.spec.iter().flat_map(|s| s.volumes.iter().flatten()).filter(|v| v.persistent_volume_claim.is_some()).count();
            ensure!(claims == 0, "{} mounts a claim: the test is about pods without one", p.name_any());
        }
        // Stage 0's pod (the committer) goes at once, without SIGTERM's checkpoint, and its
        // emptyDir with it.
        let victim = first.iter().find(|p| p.name_any().contains("-0-")).unwrap_or(&first[0]).name_any();
        let gone = node::follow_logs(&ctx, &victim);
        ctx.api::<Pod>().delete(&victim, &DeleteParams::default().grace_period(0)).await?;
        tokio::time::timeout(Duration::from_secs(90), gone).await.context("the deleted pod's log did not end")??;
        // Nothing commits from the kill until the next attempt has resumed (the first stage
        // commits, and it is gone), so the bucket's newest step now is the one to resume.
        let in_bucket = committed_steps(&s3, "team/lm").await?;
        let newest = *in_bucket.last().context("the bucket holds no committed step")?;
        ensure!(newest >= named.step, "the bucket's newest step {newest} is older than the one the status named, {}", named.step);

        let done = finished_within(&ctx, "lm", TRAINING).await?;
        let pods = node::attempt_pods(&ctx, "lm", 2).await?;
        let mut logs = Vec::new();
        for p in &pods {
            logs.push(node::logs(&ctx, &p.name_any()).await);
        }
        let logs = logs.join("\n");
        ensure!(phase(&done) == Some(Phase::Succeeded), "ended {:?}; attempt 2:\n{logs}", phase(&done));
        ensure!(pods.len() == 2, "attempt 2 has {} pods, not 2 stages", pods.len());
        // the reporting stage's resume event, and each stage saying it fetched its part
        let resumed = resumed_at(&logs).with_context(|| format!("attempt 2 did not resume:\n{logs}"))?;
        eprintln!("e2e: attempt 1 lost {victim} and its volume; the bucket held steps {in_bucket:?}; attempt 2 resumed at step {resumed}");
        ensure!(resumed == newest, "attempt 2 resumed at step {resumed}, the bucket's newest committed step is {newest}");
        let from = format!("fetched step {newest} from s3://lm-checkpoints/team/lm");
        ensure!(logs.matches(&from).count() == 2, "attempt 2's two pods do not each say {from:?}:\n{logs}");
        let last = done.status.as_ref().and_then(|s| s.checkpoint.clone()).context("no status.checkpoint at the end")?;
        ensure!(last.path == format!("s3://lm-checkpoints/team/lm/step-{steps:09}"), "status.checkpoint at the end: {last:?}");
        ensure!(committed_steps(&s3, "team/lm").await?.last() == Some(&steps), "the bucket's newest step is not the last one");
        // The export, from the bucket, in transformers.
        let hf =
            done.status.as_ref().and_then(|s| s.quality.as_ref()).and_then(|q| q.hugging_face.clone()).context("no status.quality.huggingFace")?;
        let exported = format!("s3://lm-checkpoints/team/lm-export/step-{steps:09}/hf");
        ensure!(hf.path == exported, "status.quality.huggingFace.path is {}, not {exported}", hf.path);
        let down = std::env::temp_dir().join(format!("frugal-e2e-hf-{}", ctx.namespace));
        let names = download(&s3, &format!("team/lm-export/step-{steps:09}/hf"), &down).await?;
        ensure!(names.iter().any(|n| n == "config.json") && names.iter().any(|n| n.ends_with(".safetensors")), "the export holds {names:?}");
        let loaded = transformers_loads(&down)?;
        eprintln!("e2e: transformers loaded {exported} after downloading it: {loaded}");
        ensure!(loaded.ends_with("True"), "transformers' logits are not finite: {loaded}");
        let _ = std::fs::remove_dir_all(&down);
        Ok(())
    })
    .await;
}
