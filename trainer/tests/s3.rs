//! Checkpoints in object storage, against a real S3-compatible server: SeaweedFS, built from its
//! Go module by `scripts/seaweedfs.sh` and started per test on free loopback ports. A step is
//! in the bucket only once its manifest is; a run resumes from the bucket into an empty
//! directory with bit-equal weights; a corrupt newest step there is passed over; a wrong key is
//! refused in the store's own words, naming the field.
//!
//! Without the binary these tests say so and pass, unless `FRUGAL_REQUIRE_S3` is set (as
//! `scripts/test.sh` sets it, having built the binary): then they fail.

mod common;
#[path = "support/seaweedfs.rs"]
mod seaweedfs;

use common::*;
use frugal_api::v1alpha1::ObjectStoreSpec;
use frugal_trainer::checkpoint::remote::{self, Uploader};
use frugal_trainer::parallel::Worker;
use frugal_trainer::store::{Location, Store};
use seaweedfs::{ACCESS_KEY, FIELD, SECRET_KEY, SeaweedFs};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;
use tch::Device;

/// A worker of the small run checkpointing under `dir` and to `store` (as
/// `spec.checkpoint.store` would have it, connected with the test's keys rather than the
/// process's environment), keeping `keep` steps.
fn worker(dir: &Path, store: &Store, keep: usize) -> Worker {
    let mut cfg = small_run(small_model(false), 20, Some(dir.to_path_buf()));
    cfg.keep_checkpoints = keep;
    let l = &store.location;
    cfg.checkpoint_store = Some(ObjectStoreSpec { uri: l.uri(), endpoint: l.endpoint.clone(), region: l.region.clone(), credentials_secret: None });
    let mut w = Worker::single(cfg, Device::Cpu).unwrap();
    w.uploader = Some(Uploader::new(store.clone(), keep));
    w
}

/// Trains `steps` steps, checkpoints, and collects the upload as the run loop does: polling
/// between steps (training on while it goes up), else waiting at the end.
fn train_and_upload(w: &mut Worker, steps: i64) {
    for _ in 0..steps {
        w.train_step().unwrap();
    }
    w.save_checkpoint().unwrap();
    let polled_at = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while w.uploader.as_ref().unwrap().in_flight().is_some() && std::time::Instant::now() < polled_at {
        std::thread::sleep(std::time::Duration::from_millis(20));
        w.poll_upload();
    }
    assert!(w.wait_for_upload(None));
    let up = w.take_uploads();
    assert_eq!(up.iter().map(|u| u.step).collect::<Vec<_>>(), [w.step], "the upload of step {} did not finish", w.step);
}

#[test]
fn a_step_is_in_the_bucket_only_once_its_manifest_is() {
    tch::set_num_threads(1);
    let Some(s3) = SeaweedFs::start("visibility", "visibility") else { return };
    let store = s3.store("team/run", SECRET_KEY);
    let dir = temp_dir("s3-visibility");
    let mut w = worker(&dir, &store, 3);
    train_and_upload(&mut w, 2);
    assert_eq!(remote::committed(&store).unwrap(), [2]);

    // Step 4 is committed locally, and every part of it goes up, but not yet its manifest: an
    // upload still running, or cut short by the end of a grace period.
    for _ in 0..2 {
        w.train_step().unwrap();
    }
    // committed locally, not uploaded
    let step4 = w.save_checkpoint_in(&dir, 3).unwrap();
    let mut parts = 0;
    for entry in std::fs::read_dir(&step4).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name != "MANIFEST.json" {
            store.put_file(&format!("step-000000004/{name}"), &step4.join(&name)).unwrap();
            parts += 1;
        }
    }
    assert_eq!(parts, 3, "two tensor files and trainer.json");
    assert!(store.list("step-000000004").unwrap().len() == 3);

    // A reader sees step 2 as the newest, and a run resuming from the bucket resumes it.
    assert_eq!(remote::committed(&store).unwrap(), [2]);
    let empty = temp_dir("s3-visibility-reader");
    let mut reader = worker(&empty, &store, 3);
    assert_eq!(reader.resume_latest().unwrap(), Some(2));

    // The manifest, last, commits step 4.
    store.put_file("step-000000004/MANIFEST.json", &step4.join("MANIFEST.json")).unwrap();
    assert_eq!(remote::committed(&store).unwrap(), [2, 4]);
    let empty = temp_dir("s3-visibility-reader-2");
    let mut reader = worker(&empty, &store, 3);
    assert_eq!(reader.resume_latest().unwrap(), Some(4));
    for d in [dir, empty] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn a_run_resumes_from_the_bucket_into_an_empty_directory_with_bit_equal_weights() {
    tch::set_num_threads(1);
    let Some(s3) = SeaweedFs::start("resume", "resume") else { return };
    let store = s3.store("", SECRET_KEY);
    let dir = temp_dir("s3-resume-writer");
    let mut w = worker(&dir, &store, 2);
    train_and_upload(&mut w, 3);
    // the node is gone, and its disk with it
    std::fs::remove_dir_all(&dir).unwrap();

    let empty = temp_dir("s3-resume-reader");
    let mut r = worker(&empty, &store, 2);
    assert_eq!(r.resume_latest().unwrap(), Some(3));
    assert!(r.params.master.equal(&w.params.master), "the resumed weights differ from the saved ones");
    assert_eq!(r.tokens, w.tokens);
    // Only the step it needed came down; the two runs go on alike (optimizer state, data
    // position and RNG included).
    assert!(empty.join("step-000000003/MANIFEST.json").exists());
    let (a, b) = (w.train_step().unwrap().loss, r.train_step().unwrap().loss);
    assert_eq!(a.to_bits(), b.to_bits(), "next step's loss: {a} uninterrupted, {b} resumed");
    assert!(w.params.master.equal(&r.params.master));
    let _ = std::fs::remove_dir_all(empty);
}

#[test]
fn a_corrupt_newest_step_in_the_bucket_is_passed_over_and_old_steps_are_pruned() {
    tch::set_num_threads(1);
    let Some(s3) = SeaweedFs::start("corrupt", "corrupt") else { return };
    let store = s3.store("lm", SECRET_KEY);
    let dir = temp_dir("s3-corrupt-writer");
    let mut w = worker(&dir, &store, 2);
    for _ in 0..3 {
        train_and_upload(&mut w, 1);
    }
    // keep: 2, in the bucket as on disk
    assert_eq!(remote::committed(&store).unwrap(), [2, 3]);
    assert!(store.list("step-000000001").unwrap().is_empty(), "a pruned step's parts are gone too");

    // One flipped byte in the newest step's weights, in the bucket.
    let name = "step-000000003/stage-0.model.safetensors";
    let mut bytes = store.get_bytes(name).unwrap().unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    store.put_bytes(name, bytes).unwrap();

    let empty = temp_dir("s3-corrupt-reader");
    let mut r = worker(&empty, &store, 2);
    assert_eq!(r.resume_latest().unwrap(), Some(2));
    let skipped = r.skipped_checkpoints.join("\n");
    assert!(skipped.contains(&format!("{}/step-000000003", store.location.uri())) && skipped.contains("stage-0.model.safetensors"), "{skipped}");
    assert!(!empty.join("step-000000003").exists(), "a corrupt step must not be put in place");

    // Every step there corrupt and none on disk: the run stops rather than start over on them.
    store.delete(&["step-000000002/trainer.json".to_string()]).unwrap();
    let none = temp_dir("s3-corrupt-reader-2");
    let e = format!("{:#}", worker(&none, &store, 2).resume_latest().unwrap_err());
    assert!(e.contains("step-000000003") && e.contains("step-000000002/trainer.json") && e.contains("the store's steps are corrupt"), "{e}");
    for d in [dir, empty, none] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn a_wrong_key_or_a_missing_bucket_is_refused_in_the_stores_words_naming_the_field() {
    let Some(s3) = SeaweedFs::start("credentials", "credentials") else { return };
    let e = s3.store("", "not-the-secret").check().unwrap_err().to_string();
    eprintln!("a wrong key: {e}");
    assert!(e.starts_with(FIELD) && e.contains("s3://credentials"), "{e}");
    assert!(e.contains("SignatureDoesNotMatch") || e.contains("InvalidAccessKeyId") || e.contains("AccessDenied"), "{e}");
    assert!(!e.contains("not-the-secret") && !e.contains(SECRET_KEY), "a secret in an error: {e}");

    let missing = ObjectStoreSpec { uri: "s3://no-such-bucket/x".into(), ..s3.spec("") };
    let vars = [("AWS_ACCESS_KEY_ID".to_string(), ACCESS_KEY.to_string()), ("AWS_SECRET_ACCESS_KEY".to_string(), SECRET_KEY.to_string())];
    let e = Location::of(FIELD, &missing).unwrap().open_with(vars).unwrap().check().unwrap_err().to_string();
    eprintln!("a missing bucket: {e}");
    assert!(e.starts_with(FIELD) && e.contains("NoSuchBucket"), "{e}");
}

const JOB: &str = r#"
apiVersion: frugal.dev/v1alpha1
kind: TrainingJob
metadata:
  name: s3-test
spec:
  model:
    type: Custom
    custom: {layers: 2, dModel: 32, heads: 2, seqLen: 16, vocabSize: 257}
  data:
    source: {type: Synthetic, synthetic: {branching: 4, tokens: 50000}}
  training:
    duration: {type: Steps, steps: 1000}
    batchSize: 4
    precision: fp32
    evalInterval: 100000
    evalBatches: 2
    checkpointInterval: 2
    logInterval: 1
  checkpoint:
    keep: 2
    store: {uri: "s3://cli/jobs/s3-test", endpoint: "ENDPOINT", region: us-east-1}
  resources: {device: CPU}
"#;

/// `frugal-trainer train` with the store's keys in its environment, as a pod has them; returns
/// its exit code, its JSON events and its stderr.
fn train(job: &Path, checkpoints: &Path, secret: &str, max_steps: i64) -> (i32, Vec<serde_json::Value>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_frugal-trainer"))
        .args(["train", job.to_str().unwrap(), "--threads", "1", "--json", "--checkpoint-dir", checkpoints.to_str().unwrap()])
        .args(["--max-steps", &max_steps.to_string()])
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .output()
        .unwrap();
    let events = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    (out.status.code().unwrap_or(-1), events, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn the_trainer_uploads_as_it_trains_resumes_from_the_bucket_and_stops_on_a_wrong_key_before_training() {
    let Some(s3) = SeaweedFs::start("cli", "cli") else { return };
    let dir = temp_dir("s3-cli");
    let job = dir.join("job.yaml");
    std::fs::write(&job, JOB.replace("ENDPOINT", &s3.endpoint)).unwrap();

    // A wrong key: a configuration error (exit 78) before any step, naming the field, in the
    // store's words, and without the key.
    let (code, events, stderr) = train(&job, &dir.join("wrong"), "not-the-secret", 4);
    assert_eq!(code, 78, "{stderr}");
    assert!(stderr.contains("spec.checkpoint.store (s3://cli/jobs/s3-test)"), "{stderr}");
    assert!(stderr.contains("SignatureDoesNotMatch") || stderr.contains("InvalidAccessKeyId") || stderr.contains("AccessDenied"), "{stderr}");
    assert!(!stderr.contains("not-the-secret") && events.iter().all(|e| e["event"] != "step"), "{stderr}");

    // Four steps, a checkpoint every two: both steps reach the bucket, the last one before the
    // trainer exits, each reported where it is.
    let (code, events, stderr) = train(&job, &dir.join("first"), SECRET_KEY, 4);
    assert_eq!(code, 0, "{stderr}");
    let uploaded: Vec<&str> =
        events.iter().filter(|e| e["event"] == "checkpoint").filter_map(|e| e["path"].as_str()).filter(|p| p.starts_with("s3://")).collect();
    assert_eq!(uploaded, ["s3://cli/jobs/s3-test/step-000000002", "s3://cli/jobs/s3-test/step-000000004"], "{stderr}");

    // Another node, an empty directory: the run goes on from step 4.
    let (code, events, stderr) = train(&job, &dir.join("second"), SECRET_KEY, 6);
    assert_eq!(code, 0, "{stderr}");
    let resumed = events.iter().find(|e| e["event"] == "resume").unwrap_or_else(|| panic!("no resume event: {stderr}"));
    assert_eq!(resumed["step"], 4, "{stderr}");
    // the resume showed its download and verification as progress events, each ending whole
    let progress: Vec<serde_json::Value> =
        stderr.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).filter(|l| l["event"] == "progress").collect();
    for task in ["download s3://cli/jobs/s3-test/step-000000004", "verify "] {
        let last = progress.iter().rfind(|l| l["task"].as_str().is_some_and(|t| t.starts_with(task)));
        let last = last.unwrap_or_else(|| panic!("no progress of {task:?}: {stderr}"));
        assert!(last["unit"] == "bytes" && last["total"].as_u64() > Some(0) && last["done"] == last["total"] && last["percent"] == 100, "{last}");
    }
    assert_eq!(events.iter().filter(|e| e["event"] == "step").filter_map(|e| e["step"].as_i64()).next(), Some(5));
    let store = s3.store("jobs/s3-test", SECRET_KEY);
    assert_eq!(remote::committed(&store).unwrap(), [4, 6], "keep: 2");

    // SIGTERM: the checkpoint it writes goes up before the trainer exits (143).
    let mut child = Command::new(env!("CARGO_BIN_EXE_frugal-trainer"))
        .args(["train", job.to_str().unwrap(), "--threads", "1", "--json", "--checkpoint-dir", dir.join("third").to_str().unwrap()])
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    for line in lines.by_ref() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap_or_default();
        if v["event"] == "step" && v["step"].as_i64().unwrap_or_default() >= 9 {
            break;
        }
    }
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let rest: Vec<serde_json::Value> = lines.map_while(|l| l.ok()).filter_map(|l| serde_json::from_str(&l).ok()).collect();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    let last = rest.iter().filter(|e| e["event"] == "checkpoint").filter_map(|e| e["path"].as_str()).rfind(|p| p.starts_with("s3://"));
    let stopped_at = *remote::committed(&store).unwrap().last().unwrap();
    assert!(stopped_at > 9, "{stderr}");
    assert_eq!(last, Some(format!("s3://cli/jobs/s3-test/step-{stopped_at:09}").as_str()), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_large_file_goes_up_in_parts_and_comes_down_whole() {
    let Some(s3) = SeaweedFs::start("large", "large") else { return };
    let store = s3.store("big", SECRET_KEY);
    let dir = temp_dir("s3-large");
    // 40 MiB and a bit: two full 16 MiB parts and a short one, bytes that differ part to part
    let bytes: Vec<u8> = (0..(40u64 << 20) + 12345).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(dir.join("up.bin"), &bytes).unwrap();
    let t = Instant::now();
    assert_eq!(store.put_file("f/up.bin", &dir.join("up.bin")).unwrap(), bytes.len() as u64);
    let up = t.elapsed().as_secs_f64();
    let t = Instant::now();
    assert_eq!(store.get_file("f/up.bin", &dir.join("down.bin")).unwrap(), bytes.len() as u64);
    let down = t.elapsed().as_secs_f64();
    assert!(std::fs::read(dir.join("down.bin")).unwrap() == bytes, "the file came down different");
    let mb = bytes.len() as f64 / 1e6;
    eprintln!("large: {mb:.0} MB up in {up:.2} s ({:.0} MB/s), down in {down:.2} s ({:.0} MB/s), loopback SeaweedFS", mb / up, mb / down);
    assert_eq!(store.list("f").unwrap(), ["f/up.bin"], "no part left over as an object of its own");
    let _ = std::fs::remove_dir_all(dir);
}
