//! Adds the git commit to `--version` when building from a checkout.
//!
//! Sets `CAI_GIT_SUFFIX` to ` (abc1234)`, or to nothing when git or the repository is not there —
//! a build from a crate tarball must not fail for want of git.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let suffix = match git(&["rev-parse", "--short", "HEAD"]) {
        Some(commit) => {
            // Rebuild when HEAD moves (a commit or a checkout).
            // (Only paths that exist: a missing one would rerun every build.)
            let mut watch = vec![git(&["rev-parse", "--git-path", "HEAD"])];
            if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
                watch.push(git(&["rev-parse", "--git-path", &r]));
            }
            for path in watch.into_iter().flatten() {
                if std::path::Path::new(&path).exists() {
                    println!("cargo:rerun-if-changed={path}");
                }
            }
            format!(" ({commit})")
        }
        None => String::new(),
    };
    println!("cargo:rustc-env=CAI_GIT_SUFFIX={suffix}");
}
