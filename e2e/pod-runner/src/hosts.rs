//! Peer names mapped to loopback addresses in `/etc/hosts`, one line per pod, tagged with its
//! uid so that it can be removed again.

use std::path::PathBuf;

use anyhow::{Context, Result};

pub struct Hosts {
    path: PathBuf,
}

impl Hosts {
    pub fn system() -> Self {
        Self::at(PathBuf::from("/etc/hosts"))
    }

    pub fn at(path: PathBuf) -> Self {
        Self { path }
    }

    fn tag(uid: &str) -> String {
        format!("# frugal-pod-runner {uid}")
    }

    pub fn add(&mut self, uid: &str, ip: &str, names: &[String]) -> Result<()> {
        self.remove(uid)?;
        let mut text = std::fs::read_to_string(&self.path).unwrap_or_default();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!("{ip} {} {}\n", names.join(" "), Self::tag(uid)));
        // Written in place: /etc/hosts is often a bind mount that a rename would not replace.
        std::fs::write(&self.path, text).with_context(|| format!("writing {}", self.path.display()))
    }

    pub fn remove(&mut self, uid: &str) -> Result<()> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let tag = Self::tag(uid);
        let kept: String = text.lines().filter(|l| !l.ends_with(&tag)).map(|l| format!("{l}\n")).collect();
        if kept != text {
            std::fs::write(&self.path, kept).with_context(|| format!("writing {}", self.path.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_and_go_by_uid() {
        let path = std::env::temp_dir().join(format!("hosts-test-{}", std::process::id()));
        std::fs::write(&path, "127.0.0.1 localhost\n").unwrap();
        let mut hosts = Hosts::at(path.clone());
        hosts.add("u1", "127.77.0.2", &["a-0.svc".into()]).unwrap();
        hosts.add("u2", "127.77.0.3", &["a-1.svc".into()]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("127.77.0.2 a-0.svc # frugal-pod-runner u1"));
        hosts.remove("u1").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "127.0.0.1 localhost\n127.77.0.3 a-1.svc # frugal-pod-runner u2\n");
        std::fs::remove_file(path).unwrap();
    }
}
