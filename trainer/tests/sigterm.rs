//! The binary: SIGTERM writes a checkpoint and exits 143; the next start resumes from it, and
//! sweeps what a SIGKILL mid-write left. A pipelined run serves its metrics too.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const JOB: &str = r#"
apiVersion: frugal.dev/v1alpha1
kind: TrainingJob
metadata:
  name: sigterm-test
spec:
  model:
    type: Custom
    custom: {layers: 2, dModel: 32, heads: 2, seqLen: 16, vocabSize: 257}
  data:
    source: {type: Synthetic, synthetic: {branching: 4, tokens: 50000}}
  training:
    duration: {type: Steps, steps: 100000}
    batchSize: 4
    precision: fp32
    evalInterval: 100000
    evalBatches: 2
    checkpointInterval: 100000
    logInterval: 1
  resources: {device: CPU}
"#;

fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

#[test]
fn sigterm_writes_a_checkpoint_and_the_run_resumes() {
    let dir = common::temp_dir("sigterm");
    let job = dir.join("job.yaml");
    std::fs::write(&job, JOB).unwrap();
    let ckpt = dir.join("checkpoints");
    let bin = env!("CARGO_BIN_EXE_frugal-trainer");
    let mut child = Command::new(bin)
        .args(["train", job.to_str().unwrap(), "--threads", "1", "--json", "--checkpoint-dir", ckpt.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Wait until it is training, then ask it to stop as Kubernetes would.
    for line in lines.by_ref() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        if v["event"] == "step" && v["step"].as_i64().unwrap() >= 5 {
            break;
        }
    }
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let exit = child.wait().unwrap();
    assert_eq!(exit.code(), Some(143), "a terminated run exits 143");
    let events = json_lines(&rest.join("\n"));
    let ck = events.iter().find(|e| e["event"] == "checkpoint").expect("a checkpoint event after SIGTERM");
    let stopped_at = ck["step"].as_i64().unwrap();
    assert!(stopped_at >= 5);
    let summary = events.iter().find(|e| e["event"] == "summary").unwrap();
    assert_eq!(summary["stopped_by"], "signal");

    // Start again: it resumes at that step and carries on.
    let out = Command::new(bin)
        .args(["train", job.to_str().unwrap(), "--threads", "1", "--json", "--checkpoint-dir", ckpt.to_str().unwrap()])
        .args(["--max-steps", &(stopped_at + 3).to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let events = json_lines(&String::from_utf8_lossy(&out.stdout));
    let resume = events.iter().find(|e| e["event"] == "resume").expect("a resume event");
    assert_eq!(resume["step"].as_i64(), Some(stopped_at));
    let first_step = events.iter().find(|e| e["event"] == "step").unwrap();
    assert_eq!(first_step["step"].as_i64(), Some(stopped_at + 1));
    let summary = events.iter().find(|e| e["event"] == "summary").unwrap();
    assert_eq!(summary["steps"].as_i64(), Some(stopped_at + 3));
    let _ = std::fs::remove_dir_all(dir);
}

/// [`JOB`] with a model whose checkpoint (weights and AdamW state, about 40 MB) takes a while to
/// write and sync, written after every step.
fn job_checkpointing_every_step() -> String {
    JOB.replace("{layers: 2, dModel: 32, heads: 2,", "{layers: 4, dModel: 256, heads: 4,")
        .replace("checkpointInterval: 100000", "checkpointInterval: 1")
}

/// The staging entries (`.step-*`) under a checkpoint root.
fn staging(root: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(root) else { return vec![] };
    entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with(".step-")).collect()
}

/// The step of a `step-NNNNNNNNN` or `.step-NNNNNNNNN.<suffix>` name.
fn step_of(name: &str) -> Option<i64> {
    name.trim_start_matches('.').strip_prefix("step-")?.get(..9)?.parse().ok()
}

/// The newest step under `root` that a resume can load: committed, or complete under a staging
/// name (killed between its manifest and its rename), which the start-up sweep puts in place.
fn newest_complete(root: &Path) -> Option<i64> {
    let entries = std::fs::read_dir(root).ok()?;
    entries.map(|e| e.unwrap().path()).filter(|p| p.join("MANIFEST.json").exists()).filter_map(|p| step_of(&p.file_name()?.to_string_lossy())).max()
}

/// SIGKILL (an OOM kill, a node lost) lands while a checkpoint is written, again and again until
/// one leaves a staging directory behind; the next start removes it and resumes from the newest
/// complete step.
#[test]
fn a_checkpoint_write_killed_leaves_no_staging_after_the_resume() {
    let dir = common::temp_dir("sigkill");
    let job = dir.join("job.yaml");
    std::fs::write(&job, job_checkpointing_every_step()).unwrap();
    let ckpt = dir.join("checkpoints");
    let bin = env!("CARGO_BIN_EXE_frugal-trainer");
    let train = || {
        let mut c = Command::new(bin);
        c.args(["train", job.to_str().unwrap(), "--threads", "1", "--json", "--checkpoint-dir", ckpt.to_str().unwrap()]);
        // no CPU peak measurement at each start
        c.env("FRUGAL_PEAK_TFLOPS", "1");
        c
    };
    let mut left = vec![];
    for attempt in 0..40 {
        let mut child = train().stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        // Once this start has committed a step of its own, kill it at a moment that differs
        // from one try to the next; most of the run's time goes into writing checkpoints.
        let before = newest_complete(&ckpt);
        let t0 = Instant::now();
        while newest_complete(&ckpt) == before && t0.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let jitter = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos() % 500;
        std::thread::sleep(Duration::from_millis(u64::from(jitter)));
        child.kill().unwrap();
        child.wait().unwrap();
        left = staging(&ckpt);
        if !left.is_empty() {
            eprintln!("kill {} left {left:?}", attempt + 1);
            break;
        }
    }
    assert!(!left.is_empty(), "no SIGKILL landed during a checkpoint write");
    let newest = newest_complete(&ckpt).expect("a step was committed");

    let out = train().args(["--max-steps", &(newest + 2).to_string()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let events = json_lines(&String::from_utf8_lossy(&out.stdout));
    let resume = events.iter().find(|e| e["event"] == "resume").expect("a resume event");
    assert_eq!(resume["step"].as_i64(), Some(newest), "resumes from the newest complete step");
    let first_step = events.iter().find(|e| e["event"] == "step").unwrap();
    assert_eq!(first_step["step"].as_i64(), Some(newest + 1));
    assert_eq!(staging(&ckpt), Vec::<String>::new(), "the staging of the killed write is swept");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn binary_finds_libtorch_by_rpath_and_loads_cuda_only_where_it_exists() {
    let bin = env!("CARGO_BIN_EXE_frugal-trainer");
    let out = match Command::new("readelf").args(["-d", bin]).output() {
        Ok(o) => o,
        Err(e) => panic!("readelf is needed for this check: {e}"),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("(RUNPATH)") || text.contains("(RPATH)"), "no rpath:\n{text}");
    // The CPU image has no CUDA libraries: the binary must start without them.
    assert!(!text.contains("[libtorch_cuda.so]"), "libtorch_cuda.so is NEEDED, so the cpu image cannot start:\n{text}");
    let runpath = text.lines().find(|l| l.contains("RUNPATH") || l.contains("RPATH")).unwrap();
    let dir = runpath.split('[').nth(1).unwrap().trim_end_matches(']').to_string();
    // It runs without LD_LIBRARY_PATH, and opens the CUDA backend where the wheel has one.
    let out = Command::new(bin).args(["info", "--json"]).env_remove("LD_LIBRARY_PATH").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cuda_here = std::path::Path::new(&dir).join("libtorch_cuda.so").exists();
    let loaded = info["cuda_library"].as_str();
    if cuda_here {
        let path = loaded.unwrap_or_else(|| panic!("the wheel has libtorch_cuda.so but it did not load: {info}"));
        assert!(path.ends_with("libtorch_cuda.so"), "{info}");
    } else {
        assert!(loaded.is_none() && info["cuda_library_error"].is_string(), "{info}");
    }
    assert!(info["libtorch"].as_str().is_some_and(|v| v.starts_with("2.11.0")), "{info}");
}

/// [`JOB`] as a two-stage pipeline.
fn pipelined_job() -> String {
    JOB.replace("name: sigterm-test", "name: pipelined-metrics-test") + "  parallelism: {pipelineStages: 2, schedule: 1f1b, microBatches: 2}\n"
}

fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

#[test]
fn a_pipelined_run_serves_metrics_and_ends_with_a_summary() {
    let dir = common::temp_dir("pipelined-metrics");
    let job = dir.join("job.yaml");
    std::fs::write(&job, pipelined_job()).unwrap();
    let ckpt = dir.join("checkpoints");
    let mut child = Command::new(env!("CARGO_BIN_EXE_frugal-trainer"))
        .args(["train", job.to_str().unwrap(), "--threads", "1", "--json", "--metrics-port", "0", "--checkpoint-dir", ckpt.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut port = None;
    for line in lines.by_ref() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        if v["event"] == "metrics" {
            port = v["port"].as_u64().map(|p| p as u16);
        }
        if v["event"] == "step" && v["step"].as_i64().unwrap() >= 3 {
            break;
        }
    }
    let port = port.expect("a pipelined run given --metrics-port reports the port it serves on");
    let body = scrape(port);
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert_eq!(child.wait().unwrap().code(), Some(143));
    // The final summary, as a single-stage run gives it, also written as the run report.
    let events = json_lines(&rest.join("\n"));
    let summary = events.iter().find(|e| e["event"] == "summary").expect("a summary after SIGTERM");
    assert_eq!(summary["stopped_by"], "signal");
    assert!(summary["steps"].as_i64().unwrap() >= 3 && summary["params_total"].as_i64().unwrap() > 0);
    assert!(summary["mfu"].as_f64().unwrap() > 0.0 && summary["train_loss"].as_f64().unwrap() > 0.0, "{summary}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(ckpt.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["steps"], summary["steps"]);
    let value = |name: &str| -> f64 {
        let line = body.lines().find(|l| l.starts_with(&format!("{name}{{"))).unwrap_or_else(|| panic!("no {name} in:\n{body}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(value("frugal_trainer_step") >= 3.0);
    assert!(value("frugal_trainer_tokens_total") >= 3.0 * 4.0 * 16.0);
    assert!(value("frugal_trainer_loss") > 0.0);
    assert!(value("frugal_trainer_tokens_per_second") > 0.0);
    let mfu = value("frugal_trainer_mfu_ratio");
    assert!(mfu > 0.0 && mfu < 1.0, "mfu {mfu}");
    let bubble = value("frugal_trainer_pipeline_bubble_ratio");
    assert!((0.0..1.0).contains(&bubble), "bubble {bubble}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A job that cannot run as given exits with the configuration-error code (78, which the
/// operator's pod failure policy treats as permanent) and names what to fix, before training.
#[test]
fn a_configuration_error_exits_78_and_names_the_field() {
    let dir = common::temp_dir("config-error");
    let run = |name: &str, text: &str| {
        let job = dir.join(format!("{name}.yaml"));
        std::fs::write(&job, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_frugal-trainer"))
            .args(["train", job.to_str().unwrap(), "--threads", "1", "--json", "--checkpoint-dir", dir.join("ck").to_str().unwrap()])
            .output()
            .unwrap();
        // with --json the error is a JSON log line: its message is what a person reads
        let stderr: Vec<String> = String::from_utf8_lossy(&out.stderr)
            .lines()
            .map(|l| match serde_json::from_str::<serde_json::Value>(l) {
                Ok(v) if v["level"] == "ERROR" => v["message"].as_str().unwrap_or(l).to_string(),
                _ => l.to_string(),
            })
            .collect();
        (out.status.code(), stderr.join("\n"), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let corpus = JOB.replace(
        "source: {type: Synthetic, synthetic: {branching: 4, tokens: 50000}}",
        "source: {type: Text, text: {path: /nonexistent/corpus.txt}}",
    );
    let (code, stderr, stdout) = run("corpus", &corpus);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains("data.source.text.path \"/nonexistent/corpus.txt\" cannot be read") && stderr.contains("podTemplate.volumes"),
        "{stderr}"
    );
    assert!(!stdout.contains("\"event\":\"step\""), "nothing trains: {stdout}");
    let eval = JOB.replace(
        "    source: {type: Synthetic",
        "    evalSets: [{name: lambada, type: LastWord, path: /nonexistent/lambada.jsonl}]\n    source: {type: Synthetic",
    );
    let (code, stderr, _) = run("eval", &eval);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("data.evalSets[0].path (lambada)"), "{stderr}");
    // what the API server would refuse (a bound of the CRD's schema, a misspelt field) does not train
    let bounds = JOB.replace("    checkpointInterval: 100000", "    checkpointInterval: 0\n    evalIntervall: 5");
    let (code, stderr, stdout) = run("bounds", &bounds);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("spec.training.checkpointInterval: Invalid value: 0: should be greater than or equal to 1"), "{stderr}");
    assert!(stderr.contains("spec.training.evalIntervall: unknown field"), "{stderr}");
    assert!(!stdout.contains("\"event\":\"step\""), "nothing trains: {stdout}");
    let version = "version: frugal.dev/trainer-config/v0\njob: {name: x}\n";
    let (code, stderr, _) = run("version", &format!("# a contract version this trainer does not read\n{version}"));
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("trainer-config/v0"), "{stderr}");
    // an error that is not the job's (here: an unknown device) is an ordinary failure
    std::fs::write(dir.join("good.yaml"), JOB).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_frugal-trainer"))
        .args(["train", dir.join("good.yaml").to_str().unwrap(), "--device", "tpu"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}
