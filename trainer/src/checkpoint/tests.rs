//! Commit, swap, sweep and prune on steps of one small file each: what a step holds is the
//! layouts' business, where it lives and when it is complete is this module's.

use super::*;

const FILE: &str = "w.bin";

fn root(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("frugal-checkpoint-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

/// A staging directory of `step` holding `content`, not sealed.
fn stage(root: &Path, step: i64, content: &str, suffix: &str) -> PathBuf {
    let tmp = staging_dir(root, step, suffix).unwrap();
    fs::write(tmp.join(FILE), content).unwrap();
    tmp
}

/// A staging directory of `step` holding `content`, sealed: a complete step not yet in place.
fn sealed(root: &Path, step: i64, content: &str, suffix: &str) -> PathBuf {
    let tmp = stage(root, step, content, suffix);
    seal(&tmp, Manifest::new(Layout::Single, step), &[FILE.into()]).unwrap();
    tmp
}

fn commit_step(root: &Path, step: i64, content: &str, keep: usize) -> PathBuf {
    let tmp = stage(root, step, content, "tmp-test");
    commit(root, &tmp, Manifest::new(Layout::Single, step), &[FILE.into()], keep).unwrap()
}

/// The step `step` under `root` verifies and holds `content`.
fn holds(root: &Path, step: i64, content: &str) {
    let dir = root.join(step_dir_name(step));
    verify(&dir, Layout::Single).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    assert_eq!(fs::read_to_string(dir.join(FILE)).unwrap(), content);
}

/// Every entry under `root`, sorted.
fn entries(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(root).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

fn staging(root: &Path) -> Vec<String> {
    entries(root).into_iter().filter(|n| n.starts_with(".step-")).collect()
}

#[test]
fn names_are_exactly_what_the_writer_writes() {
    assert_eq!(parse_step_name("step-000000042"), Some(42));
    assert_eq!(parse_step_name("step-1234567890"), Some(1_234_567_890));
    for foreign in ["step-42", "step-+00000042", "step--00000042", "step-000000042.corrupt", "step-", "steps-000000042", "other"] {
        assert_eq!(parse_step_name(foreign), None, "{foreign}");
    }
    assert_eq!(parse_staging(".step-000000042.tmp-17"), Some((42, "tmp-17")));
    assert_eq!(parse_staging(".step-000000042.partial"), Some((42, "partial")));
    for foreign in [".step-42.tmp-17", ".step-000000042", ".step-000000042.", "step-000000042.partial", ".hidden", ".step-x.partial"] {
        assert_eq!(parse_staging(foreign), None, "{foreign}");
    }
}

#[test]
fn committing_a_step_twice_leaves_the_second_and_no_staging() {
    let root = root("twice");
    commit_step(&root, 3, "old", 0);
    commit_step(&root, 3, "new", 0);
    holds(&root, 3, "new");
    assert_eq!(entries(&root), ["step-000000003"]);
    let _ = fs::remove_dir_all(&root);
}

/// A reader polling the step while it is committed over and over always finds it whole: the old
/// and the new one are exchanged, never removed and renamed.
#[test]
fn a_step_being_replaced_is_always_there() {
    let root = root("always-there");
    let (a, b) = (root.join("a"), root.join("b"));
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    if !exchange(&a, &b).unwrap() {
        eprintln!("{} cannot exchange directories: replacing goes through an aside (tested below)", root.display());
        return;
    }
    fs::remove_dir_all(&a).unwrap();
    fs::remove_dir_all(&b).unwrap();
    commit_step(&root, 3, "same", 0);
    let step = root.join(step_dir_name(3));
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut looks = 0;
            while !done.load(Ordering::Relaxed) {
                assert!(step.join(MANIFEST).exists() && step.join(FILE).exists(), "no complete step after {looks} looks");
                looks += 1;
            }
            looks
        });
        for _ in 0..300 {
            commit_step(&root, 3, "same", 0);
        }
        done.store(true, Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
    });
    holds(&root, 3, "same");
    assert!(staging(&root).is_empty(), "{:?}", entries(&root));
    let _ = fs::remove_dir_all(&root);
}

#[test]
fn replacing_through_an_aside_leaves_the_new_step_and_no_staging() {
    let root = root("aside");
    commit_step(&root, 3, "old", 0);
    let new = sealed(&root, 3, "new", "tmp-test");
    replace_through_aside(&root, &new, &root.join(step_dir_name(3)), 3).unwrap();
    holds(&root, 3, "new");
    assert_eq!(entries(&root), ["step-000000003"]);
    let _ = fs::remove_dir_all(&root);
}

/// A writer that dies after moving the old step aside, before renaming the new one in: the next
/// start puts a complete step back and removes the rest.
#[test]
fn a_crash_between_the_renames_of_a_replacement_loses_no_step() {
    let root = root("aside-crash");
    let final_dir = root.join(step_dir_name(3));
    commit_step(&root, 3, "old", 0);
    let _new = sealed(&root, 3, "new", "tmp-test");
    move_aside(&root, &final_dir, 3).unwrap();
    assert!(!final_dir.exists());
    let swept = sweep(&root).unwrap();
    assert_eq!(swept.restored, std::slice::from_ref(&final_dir));
    holds(&root, 3, "new");
    assert_eq!(entries(&root), ["step-000000003"]);

    // The new one not yet sealed: the old one comes back.
    commit_step(&root, 3, "old", 0);
    let _new = stage(&root, 3, "new", "tmp-test");
    move_aside(&root, &final_dir, 3).unwrap();
    sweep(&root).unwrap();
    holds(&root, 3, "old");
    assert_eq!(entries(&root), ["step-000000003"]);
    let _ = fs::remove_dir_all(&root);
}

/// A writer that dies after the exchange, before discarding the old step (now under the staging
/// name): the new step is in place and the sweep removes the old one.
#[test]
fn a_crash_after_the_exchange_leaves_the_old_step_to_the_sweep() {
    let root = root("exchange-crash");
    let final_dir = root.join(step_dir_name(3));
    commit_step(&root, 3, "old", 0);
    let new = sealed(&root, 3, "new", "tmp-test");
    if !exchange(&new, &final_dir).unwrap() {
        eprintln!("{} cannot exchange directories", root.display());
        return;
    }
    holds(&root, 3, "new");
    let swept = sweep(&root).unwrap();
    assert!(swept.restored.is_empty());
    assert_eq!(swept.removed, [new]);
    holds(&root, 3, "new");
    assert_eq!(entries(&root), ["step-000000003"]);
    let _ = fs::remove_dir_all(&root);
}

#[test]
fn the_sweep_removes_staging_and_nothing_else() {
    let root = root("sweep");
    commit_step(&root, 1, "one", 0);
    // killed writers: a single process's, a pipeline's parts, a removal cut short
    stage(&root, 2, "two", "tmp-4242");
    let parts = stage(&root, 2, "two", "partial");
    fs::write(parts.join("stage-1.model.safetensors"), "part").unwrap();
    sealed(&root, 1, "one again", "discarded-1-2-3");
    // a complete step of a number that is in place already
    sealed(&root, 1, "one again", "tmp-4243");
    let foreign = [".hidden", ".step-x.partial", "notes.txt", "step-000000001.corrupt", "other-job", "step-5"];
    for name in foreign {
        fs::create_dir_all(root.join(name)).unwrap();
    }
    fs::write(root.join(".step-000000009.tmp-1-a-file"), "not a directory").unwrap();
    let swept = sweep(&root).unwrap();
    assert_eq!(swept.removed.len(), 4, "{swept:?}");
    assert!(swept.restored.is_empty());
    holds(&root, 1, "one");
    let mut left: Vec<&str> = foreign.to_vec();
    left.extend(["step-000000001", ".step-000000009.tmp-1-a-file"]);
    left.sort();
    assert_eq!(entries(&root), left);
    let _ = fs::remove_dir_all(&root);
}

/// Resuming sweeps first, then loads the newest committed step.
#[test]
fn resuming_sweeps_the_staging_of_a_killed_write() {
    let root = root("resume");
    commit_step(&root, 1, "one", 0);
    commit_step(&root, 2, "two", 0);
    stage(&root, 3, "three, half written", "tmp-4242");
    let resumed = newest_intact(&root, |dir| Ok(verify(dir, Layout::Single)?.step)).unwrap().unwrap();
    assert_eq!(resumed.loaded, 2);
    assert!(staging(&root).is_empty(), "{:?}", entries(&root));
    let _ = fs::remove_dir_all(&root);
}

#[test]
fn prune_leaves_foreign_directories_alone() {
    let root = root("prune");
    // a person's copy of a step, a step set aside as corrupt, another job's steps, notes
    let foreign = ["step-7", "step-000000001.corrupt", "step-000000002-backup", "other-job"];
    for name in foreign {
        fs::create_dir_all(root.join(name)).unwrap();
        fs::write(root.join(name).join(MANIFEST), "{}").unwrap();
    }
    fs::create_dir_all(root.join("other-job").join(step_dir_name(1))).unwrap();
    fs::write(root.join("notes.txt"), "mine").unwrap();
    for step in 1..=4 {
        commit_step(&root, step, &format!("step {step}"), 2);
    }
    holds(&root, 3, "step 3");
    holds(&root, 4, "step 4");
    let mut left: Vec<&str> = foreign.to_vec();
    left.extend(["notes.txt", "step-000000003", "step-000000004"]);
    left.sort();
    assert_eq!(entries(&root), left);
    assert!(root.join("other-job").join(step_dir_name(1)).exists());
    let _ = fs::remove_dir_all(&root);
}
