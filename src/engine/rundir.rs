//! The run directory: one run at a time, and only the run it was made for.
//!
//! [`RunDir::open`] creates `--out`, then takes an OS advisory lock on
//! `.cai/lock` (`flock`): a second `cai` on the same directory (a CI retry, a
//! Slurm requeue, a second terminal) is refused at once, before it writes
//! anything, naming the directory and the process holding it. The lock is
//! the kernel's, not a PID file: it goes away with the process, even after
//! `kill -9`, so a killed run never leaves the directory stuck. The PID
//! written into the lock file is only there to name the holder.
//!
//! The fingerprint (`.cai/run.json`) holds everything that changes what a
//! request or a row would be. Resuming with a different one would mix two
//! datasets in one directory, so [`RunDir::guard`] refuses it, naming what
//! changed, unless the user passes `--force`.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where a run keeps its state (journal, commit log, fingerprint, lock).
pub const STATE_DIR: &str = ".cai";

/// Why a run directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    /// Bad usage: nothing was written (exit 2).
    #[error("{0}")]
    Usage(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> RunDirError + '_ {
    move |source| RunDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What must match between a run and its resume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub provider: String,
    pub model: String,
    pub constitution_sha256: String,
    pub templates_sha256: String,
    pub params: Value,
    pub rounds: u32,
    pub preference: String,
    pub seed: u64,
}

impl Fingerprint {
    /// Names of the fields that differ from `old`.
    pub fn changes_from(&self, old: &Fingerprint) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |name: &str, a: String, b: String| {
            if a != b {
                out.push(format!("{name}: {b} → {a}"));
            }
        };
        check("provider", self.provider.clone(), old.provider.clone());
        check("model", self.model.clone(), old.model.clone());
        check(
            "constitution",
            short(&self.constitution_sha256),
            short(&old.constitution_sha256),
        );
        check(
            "templates",
            short(&self.templates_sha256),
            short(&old.templates_sha256),
        );
        check(
            "parameters",
            self.params.to_string(),
            old.params.to_string(),
        );
        check("rounds", self.rounds.to_string(), old.rounds.to_string());
        check(
            "preference",
            self.preference.clone(),
            old.preference.clone(),
        );
        check("seed", self.seed.to_string(), old.seed.to_string());
        out
    }
}

fn short(h: &str) -> String {
    format!("sha256:{}", &h[..h.len().min(12)])
}

/// A locked run directory; the lock is released when this is dropped (or
/// by the OS when the process dies).
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    _lock: File,
}

impl RunDir {
    /// Creates `path` (and its state directory) and locks it.
    pub fn open(path: &Path) -> Result<RunDir, RunDirError> {
        if path.exists() && !path.is_dir() {
            return Err(RunDirError::Usage(format!(
                "--out {} is a file, not a directory: give a directory for the run (it is created when missing)",
                path.display()
            )));
        }
        let state = path.join(STATE_DIR);
        std::fs::create_dir_all(&state).map_err(io(&state))?;
        let lock_path = state.join("lock");
        let mut lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = lock.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.chars().all(|c| c.is_ascii_digit()) && !holder.is_empty() {
                    format!(" (process {holder})")
                } else {
                    String::new()
                };
                return Err(RunDirError::Usage(format!(
                    "{} is in use by another cai run{who}; wait for it to finish, or use another --out",
                    path.display()
                )));
            }
            Err(TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
        }
        // Informational only: the lock, not this number, decides.
        let _ = lock.set_len(0);
        let _ = lock.rewind();
        let _ = write!(lock, "{}", std::process::id());
        let _ = lock.flush();
        Ok(RunDir {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `.cai/` inside the run directory.
    pub fn state_dir(&self) -> PathBuf {
        self.path.join(STATE_DIR)
    }

    /// The fingerprint of an earlier run in this directory, if any.
    pub fn fingerprint(&self) -> Result<Option<Fingerprint>, RunDirError> {
        let path = self.state_dir().join("run.json");
        match std::fs::read(&path) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Refuses to resume a run made with other settings (unless `force`),
    /// then records `fp` as this directory's fingerprint. `what` names the
    /// data that would be mixed ("two datasets", "two label sets").
    pub fn guard(&self, fp: &Fingerprint, force: bool, what: &str) -> Result<(), RunDirError> {
        if let Some(old) = self.fingerprint()? {
            let changes = fp.changes_from(&old);
            if !changes.is_empty() && !force {
                return Err(RunDirError::Usage(format!(
                    "{} holds a run with different settings; resuming would mix {what}. Changed: {}. Use a new --out, or pass --force to resume anyway",
                    self.path.display(),
                    changes.join("; ")
                )));
            }
        }
        write_atomic(&self.state_dir().join("run.json"), fp)
    }
}

/// Writes `value` as pretty JSON through a temporary file and a rename, so
/// a reader never sees half of it.
pub fn write_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), RunDirError> {
    let tmp = path.with_extension("json.tmp");
    let mut bytes =
        serde_json::to_vec_pretty(value).map_err(|e| io(path)(std::io::Error::other(e)))?;
    bytes.push(b'\n');
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_open_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        let first = RunDir::open(&out).unwrap();
        let err = RunDir::open(&out).unwrap_err().to_string();
        assert!(err.contains("is in use by another cai run"), "{err}");
        assert!(
            err.contains(&format!("(process {})", std::process::id())),
            "{err}"
        );
        drop(first);
        RunDir::open(&out).unwrap();
    }

    #[test]
    fn a_file_is_not_a_run_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("out.txt");
        std::fs::write(&file, "x").unwrap();
        let err = RunDir::open(&file).unwrap_err();
        assert!(matches!(err, RunDirError::Usage(_)), "{err}");
        assert!(err.to_string().contains("is a file, not a directory"));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
    }
}
