//! No import circles in the operator, the trainer or the API crate, at any level: the modules
//! side by side in one folder (`src/` itself, or a folder module such as `src/training_job/`)
//! must not name each other in a circle. A module is a file `x.rs` or a folder `x/` with
//! everything under it; a file that names `crate::a::b` or `super::b` (braced groups such as
//! `crate::{a, b::c}` included) depends on the module the path reaches. Test code
//! (`#[cfg(test)]` onwards, and `tests.rs` files) and whole-line comments are left out; tests may
//! reach anywhere. A path through a re-export (`super::Item` that the parent imported from a
//! sibling) is not followed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") && path.file_name().is_some_and(|n| n != "tests.rs") {
            out.push(path);
        }
    }
}

/// The module a file under `src` holds, from the crate root: `a/b.rs` and `a/b/mod.rs` are
/// `a::b`; `main.rs` and `lib.rs` are the root.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut path: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    if path.last().is_some_and(|m| m == "mod") || path == ["main"] || path == ["lib"] {
        path.pop();
    }
    path
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths a path written from `at` on names, braced groups expanded: `a::{b, c::d}` is
/// `a::b` and `a::c::d`. `self` in a group names the path before it.
fn paths_at(text: &str, mut at: usize) -> Vec<Vec<String>> {
    fn skip_space(text: &str, at: &mut usize) {
        while text[*at..].starts_with(char::is_whitespace) {
            *at += text[*at..].chars().next().unwrap().len_utf8();
        }
    }
    fn tree(text: &str, at: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
        let mut path = prefix;
        loop {
            skip_space(text, at);
            if text[*at..].starts_with('{') {
                *at += 1;
                loop {
                    skip_space(text, at);
                    if *at >= text.len() || text[*at..].starts_with('}') {
                        *at += 1;
                        return;
                    }
                    tree(text, at, path.clone(), out);
                    skip_space(text, at);
                    if text[*at..].starts_with(',') {
                        *at += 1;
                    }
                }
            }
            let segment: String = text[*at..].chars().take_while(|c| is_ident(*c)).collect();
            if segment.is_empty() {
                out.push(path);
                return;
            }
            *at += segment.len();
            if segment != "self" {
                path.push(segment);
            }
            if !text[*at..].starts_with("::") {
                out.push(path);
                return;
            }
            *at += 2;
        }
    }
    let mut out = Vec::new();
    tree(text, &mut at, Vec::new(), &mut out);
    out
}

/// The modules that `code`, the text of module `module`, names by a path from the crate root or
/// its parents, each as its path from the crate root (possibly ending in an item's name).
fn named_paths(module: &[String], code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for start in ["crate::", "super::"] {
        for (at, _) in code.match_indices(start) {
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| is_ident(c) || c == '$' || c == ':') {
                continue;
            }
            for path in paths_at(code, at) {
                let mut segments = path.into_iter().peekable();
                let mut resolved: Vec<String> = if segments.peek().is_some_and(|s| s == "crate") {
                    segments.next();
                    Vec::new()
                } else {
                    module.to_vec()
                };
                while segments.peek().is_some_and(|s| s == "super") {
                    segments.next();
                    resolved.pop();
                }
                resolved.extend(segments);
                out.push(resolved);
            }
        }
    }
    out
}

/// The code of a file that counts: up to its tests, without whole-line comments.
fn code_of(text: &str) -> String {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    code.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// For each folder of the crate at `src` (the root is `[]`), the modules in it and the modules
/// beside them that each names.
fn dependencies(src: &Path) -> BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: Vec<(Vec<String>, &PathBuf)> = files.iter().map(|f| (module_of(src, f), f)).collect();
    let mut levels: BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (module, _) in &modules {
        for depth in 0..module.len() {
            levels.entry(module[..depth].to_vec()).or_default().entry(module[depth].clone()).or_default();
        }
    }
    for (module, file) in &modules {
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        for path in named_paths(module, &code) {
            // the folder both sit in, and the module on each side of it
            let shared = module.iter().zip(&path).take_while(|(a, b)| a == b).count();
            let (Some(from), Some(to)) = (module.get(shared), path.get(shared)) else { continue };
            let level = levels.get_mut(&module[..shared]).unwrap();
            if level.contains_key(to) {
                level.get_mut(from).unwrap().insert(to.clone());
            }
        }
    }
    levels
}

/// A cycle in `deps`, as the modules on it, if there is one.
fn cycle(deps: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(m: &str, deps: &BTreeMap<String, BTreeSet<String>>, path: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut c = path[i..].to_vec();
            c.push(m.to_string());
            return Some(c);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for d in &deps[m] {
            if let Some(c) = visit(d, deps, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    deps.keys().find_map(|m| visit(m, deps, &mut Vec::new(), &mut done))
}

/// The first circle in the crate at `src`, written with the modules' paths.
fn first_circle(src: &Path) -> Option<String> {
    dependencies(src).iter().find_map(|(folder, deps)| {
        let c = cycle(deps)?;
        Some(c.iter().map(|m| [folder.as_slice(), std::slice::from_ref(m)].concat().join("::")).collect::<Vec<_>>().join(" → "))
    })
}

#[test]
fn no_crate_has_an_import_circle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for krate in ["operator", "trainer", "api"] {
        let src = root.join(krate).join("src");
        let top = dependencies(&src).remove(&Vec::new()).unwrap_or_default();
        assert!(top.len() >= 3, "{krate}: only {} modules found", top.len());
        if let Some(c) = first_circle(&src) {
            panic!("{krate}/src has an import circle: {c}");
        }
    }
}

#[test]
fn the_check_finds_a_circle() {
    let deps: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_string(), ["b".to_string()].into()),
        ("b".to_string(), ["c".to_string()].into()),
        ("c".to_string(), ["a".to_string()].into()),
        ("d".to_string(), BTreeSet::new()),
    ]
    .into();
    assert_eq!(cycle(&deps), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
}

#[test]
fn paths_are_read_through_groups_super_and_folders() {
    let module = |m: &str| m.split("::").map(str::to_string).collect::<Vec<_>>();
    let code = "use crate::{names, job::{plan::Plan, self}};\nuse super::super::admit::gates;\nlet x = $crate::macros::m;";
    let named: Vec<String> = named_paths(&module("job::build::pods"), code).iter().map(|p| p.join("::")).collect();
    assert_eq!(named, ["names", "job::plan::Plan", "job", "job::admit::gates"]);
    assert_eq!(module_of(Path::new("src"), Path::new("src/job/build/mod.rs")), module("job::build"));
    assert_eq!(module_of(Path::new("src"), Path::new("src/main.rs")), Vec::<String>::new());
    assert_eq!(code_of("use crate::a;\n/// see crate::b\n    // crate::c\nfn f() {}\n#[cfg(test)]\nuse crate::d;"), "use crate::a;\nfn f() {}");
}
