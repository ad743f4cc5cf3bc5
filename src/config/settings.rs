//! Where option values come from: `cai.toml`, `.env`, the environment and
//! flags, each overriding the one before.
//!
//! 1. **`cai.toml`**: `./cai.toml` in the working directory if it exists,
//!    else the user's `$XDG_CONFIG_HOME/cai/cai.toml` (default
//!    `~/.config/cai/cai.toml`). Only the first one found is read. Top-level
//!    keys set defaults for any subcommand that has the option:
//!    `provider`, `model`, `base_url`, `api_key_env`, `chat_template`,
//!    `timeout`, `max_tokens`, `temperature`, `top_p`, `seed`,
//!    `concurrency`, `rpm`, `tpm`, `max_retries`, `rounds`, `price_in`,
//!    `price_out`, `max_cost`, `max_reply_bytes`, `local_parallel`,
//!    `local_cache_mb`, `prompt_cache`, `api`, `base_format`, and `cai optimize`'s per-role sampling:
//!    `base_temperature`, `base_max_tokens`, `evaluator_temperature`,
//!    `evaluator_max_tokens`, `optimizer_temperature`, `optimizer_top_p`,
//!    `optimizer_max_tokens`. Tables `[endpoints.NAME]` (keys `provider`,
//!    `model`, `base_url`, `api_key_env`) define named endpoints, used as
//!    `--provider NAME` (or `provider = "NAME"`): the endpoint's values
//!    replace those of the file and the environment, and only flags given
//!    on the command line beat them. Keys never go in this file.
//! 2. **`.env`** in the working directory: `KEY=VALUE` lines (`export `
//!    prefix, `#` comments, single or double quotes allowed). It only
//!    supplies environment variables, typically API keys, and never
//!    overrides a variable that is already set.
//! 3. **The environment**: `CAI_<KEY>` (e.g. `CAI_MODEL`, `CAI_MAX_TOKENS`)
//!    for every key above, and the providers' key variables.
//! 4. **Flags** on the command line win over everything.
//!
//! Values from the file or the environment are handed to the same parser
//! as flags (they are appended to the arguments when no flag gave them), so
//! they are checked the same way. `cai config show` prints each value with
//! its origin; key values are never printed, only `***` and where they were
//! found.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use clap::parser::ValueSource;
use clap::CommandFactory;

use crate::cli::Cli;
use crate::config::ConfigError;

/// Keys the config file and `CAI_*` variables may set; each is also the
/// clap id of the option (`base_url` ↔ `--base-url`).
pub const KEYS: &[&str] = &[
    "provider",
    "model",
    "base_url",
    "api_key_env",
    "chat_template",
    "timeout",
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "concurrency",
    "rpm",
    "tpm",
    "max_retries",
    "rounds",
    "price_in",
    "price_out",
    "max_cost",
    "max_reply_bytes",
    "local_parallel",
    "local_cache_mb",
    "prompt_cache",
    "api",
    "base_format",
    "base_temperature",
    "base_max_tokens",
    "evaluator_temperature",
    "evaluator_max_tokens",
    "optimizer_temperature",
    "optimizer_top_p",
    "optimizer_max_tokens",
];

/// Keys an `[endpoints.NAME]` table may set.
const ENDPOINT_KEYS: &[&str] = &[
    "provider",
    "model",
    "base_url",
    "base_urls",
    "weights",
    "api_key_env",
];

/// The file name looked for.
pub const FILE_NAME: &str = "cai.toml";

/// The flag of a key: `base_url` → `--base-url`.
pub fn flag(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

/// The environment variable of a key: `base_url` → `CAI_BASE_URL`.
pub fn env_var(key: &str) -> String {
    format!("CAI_{}", key.to_ascii_uppercase())
}

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Flag,
    /// A variable of the process environment.
    Env(String),
    /// A variable set from `.env`.
    DotEnv(String),
    File(PathBuf),
    /// A named endpoint of the config file.
    Endpoint(String),
    Default,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Flag => f.write_str("flag"),
            Source::Env(v) => write!(f, "environment ${v}"),
            Source::DotEnv(v) => write!(f, ".env {v}"),
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Endpoint(n) => write!(f, "endpoint {n}"),
            Source::Default => f.write_str("default"),
        }
    }
}

/// A named endpoint from the config file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointDef {
    pub values: BTreeMap<String, String>,
}

/// What the config file holds.
#[derive(Clone, Debug, Default)]
pub struct FileConfig {
    pub path: Option<PathBuf>,
    pub values: BTreeMap<String, String>,
    pub endpoints: BTreeMap<String, EndpointDef>,
}

/// One effective value.
#[derive(Clone, Debug)]
pub struct Entry {
    pub key: &'static str,
    pub value: Option<String>,
    pub source: Source,
}

/// The effective configuration of this invocation, for `cai config show`.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub searched: Vec<PathBuf>,
    pub file: FileConfig,
    pub dotenv: Option<PathBuf>,
    /// Names of the variables `.env` set (never their values).
    pub dotenv_vars: Vec<String>,
    pub entries: Vec<Entry>,
    /// The endpoint `--provider` named, if any.
    pub endpoint: Option<String>,
}

impl Report {
    /// Where an environment variable's value came from, if it is set.
    pub fn var_source(&self, var: &str) -> Option<Source> {
        std::env::var_os(var).filter(|v| !v.is_empty())?;
        Some(if self.dotenv_vars.iter().any(|v| v == var) {
            Source::DotEnv(var.to_string())
        } else {
            Source::Env(var.to_string())
        })
    }
}

static REPORT: OnceLock<Report> = OnceLock::new();

/// The report of [`prepare`], once it ran.
pub fn report() -> Option<&'static Report> {
    REPORT.get()
}

/// Arguments ready for clap, with the config file and environment applied.
pub struct Prepared {
    pub argv: Vec<String>,
}

/// Reads `.env` and `cai.toml` and returns the arguments with every value
/// they (or `CAI_*` variables) supply and no flag gave appended.
///
/// Runs before the async runtime starts: setting environment variables is
/// only sound while the process has one thread.
pub fn prepare(argv: Vec<String>) -> Result<Prepared, ConfigError> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let mut report = Report::default();

    let dotenv = cwd.join(".env");
    if dotenv.is_file() {
        let text = std::fs::read_to_string(&dotenv).map_err(|e| ConfigError::File {
            path: dotenv.clone(),
            why: format!("cannot read: {e}"),
        })?;
        for (k, v) in parse_dotenv(&text).map_err(|e| ConfigError::FileLine {
            path: dotenv.clone(),
            line: e.line,
            why: e.why.to_string(),
        })? {
            if std::env::var_os(&k).is_none() {
                // Single-threaded here (see above).
                std::env::set_var(&k, v);
                report.dotenv_vars.push(k);
            }
        }
        report.dotenv = Some(dotenv);
    }

    report.searched = config_candidates(&cwd);
    if let Some(path) = report.searched.iter().find(|p| p.is_file()) {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.clone(),
            why: format!("cannot read: {e}"),
        })?;
        report.file = parse_file(path, &text)?;
    }

    let (argv, report) = apply(argv, report)?;
    let _ = REPORT.set(report);
    Ok(Prepared { argv })
}

/// `./cai.toml`, then the user config directory's.
fn config_candidates(cwd: &Path) -> Vec<PathBuf> {
    let mut out = vec![cwd.join(FILE_NAME)];
    let xdg = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let home = std::env::var_os("HOME").map(PathBuf::from);
    if let Some(dir) = xdg.or_else(|| home.map(|h| h.join(".config"))) {
        out.push(dir.join("cai").join(FILE_NAME));
    }
    out
}

fn scalar(path: &Path, key: &str, v: &toml::Value) -> Result<String, ConfigError> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(ConfigError::FileKey {
            path: path.to_path_buf(),
            key: key.to_string(),
            why: format!("expected a string or a number, found {}", other.type_str()),
        }),
    }
}

/// `[endpoints.NAME] base_urls = [...]` (optional `weights = [...]`, one
/// per URL) as the value of one `--base-url` list: `URL#weight=W,...`.
fn pool_urls(path: &Path, name: &str, ep: &toml::Table) -> Result<Option<String>, ConfigError> {
    let bad = |k: &str, what: &str| ConfigError::FileKey {
        path: path.to_path_buf(),
        key: format!("endpoints.{name}.{k}"),
        why: what.to_string(),
    };
    let Some(urls) = ep.get("base_urls") else {
        return match ep.get("weights") {
            Some(_) => Err(bad("weights", "goes with base_urls")),
            None => Ok(None),
        };
    };
    if ep.contains_key("base_url") {
        return Err(bad("base_urls", "give base_url or base_urls, not both"));
    }
    let urls: Vec<String> = match urls {
        toml::Value::Array(a) if !a.is_empty() => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("base_urls", "expected a list of URL strings"))?,
        _ => return Err(bad("base_urls", "expected a non-empty list of URL strings")),
    };
    let weights: Vec<f64> = match ep.get("weights") {
        None => vec![1.0; urls.len()],
        Some(toml::Value::Array(a)) => a
            .iter()
            .map(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)))
            .collect::<Option<_>>()
            .filter(|w: &Vec<f64>| w.len() == urls.len())
            .ok_or_else(|| bad("weights", "expected one number per base_urls entry"))?,
        Some(_) => return Err(bad("weights", "expected a list of numbers")),
    };
    Ok(Some(
        urls.iter()
            .zip(&weights)
            .map(|(u, w)| format!("{u}#weight={w}"))
            .collect::<Vec<_>>()
            .join(","),
    ))
}

/// Parses `cai.toml`; unknown keys are errors (a typo would otherwise be
/// silently ignored).
pub fn parse_file(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::File {
            path: path.to_path_buf(),
            why: e.message().to_string(),
        })?;
    let bad = |key: String, why: String| ConfigError::FileKey {
        path: path.to_path_buf(),
        key,
        why,
    };
    let mut cfg = FileConfig {
        path: Some(path.to_path_buf()),
        ..FileConfig::default()
    };
    for (key, value) in &table {
        if key == "endpoints" {
            let toml::Value::Table(eps) = value else {
                return Err(bad(
                    "endpoints".into(),
                    "expected tables [endpoints.NAME]".into(),
                ));
            };
            for (name, ep) in eps {
                let toml::Value::Table(ep) = ep else {
                    return Err(bad(format!("endpoints.{name}"), "expected a table".into()));
                };
                let mut def = EndpointDef::default();
                if let Some(urls) = pool_urls(path, name, ep)? {
                    def.values.insert("base_url".into(), urls);
                }
                for (k, v) in ep {
                    if k == "base_urls" || k == "weights" {
                        continue;
                    }
                    if !ENDPOINT_KEYS.contains(&k.as_str()) {
                        return Err(bad(
                            format!("endpoints.{name}.{k}"),
                            format!("unknown key (known: {})", ENDPOINT_KEYS.join(", ")),
                        ));
                    }
                    def.values.insert(
                        k.clone(),
                        scalar(path, &format!("endpoints.{name}.{k}"), v)?,
                    );
                }
                if !def.values.contains_key("provider") {
                    return Err(bad(format!("endpoints.{name}.provider"), "missing".into()));
                }
                cfg.endpoints.insert(name.clone(), def);
            }
        } else if KEYS.contains(&key.as_str()) {
            cfg.values.insert(key.clone(), scalar(path, key, value)?);
        } else {
            let hint = if key.ends_with("_key") || key.contains("token") || key == "api_key" {
                " (keys belong in the environment or .env, not in this file)"
            } else {
                ""
            };
            return Err(bad(
                key.clone(),
                format!(
                    "unknown key{hint} (known: {}, [endpoints.NAME])",
                    KEYS.join(", ")
                ),
            ));
        }
    }
    Ok(cfg)
}

/// A `.env` line that does not parse: its 1-based number and why, never
/// the line itself (it may hold a key).
#[derive(Debug, PartialEq, Eq)]
pub struct DotenvError {
    pub line: usize,
    pub why: &'static str,
}

/// Parses `.env` text into (name, value) pairs.
pub fn parse_dotenv(text: &str) -> Result<Vec<(String, String)>, DotenvError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((k, v)) = line.split_once('=') else {
            return Err(DotenvError {
                line: i + 1,
                why: "expected KEY=VALUE",
            });
        };
        let k = k.trim();
        let valid = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(DotenvError {
                line: i + 1,
                why: "the name before `=` is not a variable name",
            });
        }
        let v = v.trim();
        let value = if let Some(rest) = v.strip_prefix('"') {
            let mut s = String::new();
            let mut chars = rest.chars();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '"' => {
                        closed = true;
                        break;
                    }
                    '\\' => match chars.next() {
                        Some('n') => s.push('\n'),
                        Some(o) => s.push(o),
                        None => break,
                    },
                    c => s.push(c),
                }
            }
            if !closed {
                return Err(DotenvError {
                    line: i + 1,
                    why: "unclosed double quote",
                });
            }
            s
        } else if let Some(rest) = v.strip_prefix('\'') {
            match rest.split_once('\'') {
                Some((s, _)) => s.to_string(),
                None => {
                    return Err(DotenvError {
                        line: i + 1,
                        why: "unclosed single quote",
                    })
                }
            }
        } else {
            // An unquoted value ends at a ` #` comment.
            match v.find(" #") {
                Some(at) => v[..at].trim_end().to_string(),
                None => v.to_string(),
            }
        };
        out.push((k.to_string(), value));
    }
    Ok(out)
}

/// The subcommand's clap command and matches, innermost first.
fn leaf<'a>(
    cmd: &'a clap::Command,
    m: &'a clap::ArgMatches,
) -> (&'a clap::Command, &'a clap::ArgMatches) {
    let (mut c, mut m) = (cmd, m);
    while let Some((name, sm)) = m.subcommand() {
        match c.find_subcommand(name) {
            Some(sc) => {
                c = sc;
                m = sm;
            }
            None => break,
        }
    }
    (c, m)
}

fn raw_value(m: &clap::ArgMatches, id: &str) -> Option<String> {
    m.get_raw(id)
        .and_then(|mut v| v.next())
        .map(|v| v.to_string_lossy().into_owned())
}

fn default_value(cmd: &clap::Command, id: &str) -> Option<String> {
    let search = |c: &clap::Command| {
        c.get_arguments()
            .find(|a| a.get_id() == id)
            .and_then(|a| a.get_default_values().first())
            .map(|v| v.to_string_lossy().into_owned())
    };
    search(cmd)
}

/// Rewrites `--provider NAME` for a named endpoint into its provider.
fn rewrite_endpoint_flag(argv: &mut [String], file: &FileConfig) -> Option<String> {
    let mut i = 1;
    while i < argv.len() {
        if argv[i] == "--" {
            break;
        }
        let (value_at, inline) = if argv[i] == "--provider" {
            (i + 1, false)
        } else if argv[i].starts_with("--provider=") {
            (i, true)
        } else {
            i += 1;
            continue;
        };
        let name = if inline {
            argv[i]["--provider=".len()..].to_string()
        } else {
            argv.get(value_at)?.clone()
        };
        let ep = file.endpoints.get(&name)?;
        let provider = ep.values.get("provider")?.clone();
        argv[value_at] = if inline {
            format!("--provider={provider}")
        } else {
            provider
        };
        return Some(name);
    }
    None
}

/// Applies `cai.toml` and the environment under the command line. Long
/// because it walks each setting in precedence order, recording where each
/// value came from for `cai config show`.
fn apply(mut argv: Vec<String>, mut report: Report) -> Result<(Vec<String>, Report), ConfigError> {
    let flag_endpoint = rewrite_endpoint_flag(&mut argv, &report.file);
    let cmd = Cli::command();
    let Ok(matches) = cmd.clone().try_get_matches_from(&argv) else {
        // Let the real parse report the usage error (or print --help).
        return Ok((argv, report));
    };
    let (sub, m) = leaf(&cmd, &matches);
    let generate = cmd.find_subcommand("generate");
    let has = |id: &str| sub.get_arguments().any(|a| a.get_id() == id);
    let from_flag = |id: &str| has(id) && m.value_source(id) == Some(ValueSource::CommandLine);

    // Where a key's value comes from when no flag gives it.
    let lower = |key: &str| -> Option<(String, Source)> {
        let var = env_var(key);
        if let Some(v) = std::env::var_os(&var).filter(|v| !v.is_empty()) {
            let source = report.var_source(&var).unwrap_or(Source::Env(var.clone()));
            return Some((v.to_string_lossy().into_owned(), source));
        }
        let file = report.file.path.clone()?;
        report
            .file
            .values
            .get(key)
            .map(|v| (v.clone(), Source::File(file)))
    };

    // The named endpoint in force, from the flag or a lower layer.
    let endpoint: Option<(String, Source)> = match flag_endpoint {
        Some(name) => Some((name, Source::Flag)),
        None if from_flag("provider") => None,
        None => lower("provider").filter(|(v, _)| report.file.endpoints.contains_key(v)),
    };
    let ep_values = endpoint
        .as_ref()
        .and_then(|(n, _)| report.file.endpoints.get(n))
        .cloned()
        .unwrap_or_default();

    let mut extra: Vec<(String, String, Source)> = Vec::new();
    let mut entries = Vec::new();
    for &key in KEYS {
        let (value, source) = if from_flag(key) {
            (raw_value(m, key), Source::Flag)
        } else if let (Some(v), Some((name, _))) = (ep_values.values.get(key), &endpoint) {
            (Some(v.clone()), Source::Endpoint(name.clone()))
        } else if let Some((v, s)) = lower(key) {
            (Some(v), s)
        } else {
            let d = if has(key) {
                default_value(sub, key)
            } else {
                generate.and_then(|g| default_value(g, key))
            };
            (d, Source::Default)
        };
        let injected = !matches!(source, Source::Flag | Source::Default) && has(key);
        if let (true, Some(v)) = (injected, &value) {
            extra.push((key.to_string(), v.clone(), source.clone()));
        }
        entries.push(Entry { key, value, source });
    }
    report.entries = entries;
    report.endpoint = endpoint.map(|(n, _)| n);

    if extra.is_empty() {
        return Ok((argv, report));
    }
    let mut out = argv.clone();
    for (key, value, _) in &extra {
        out.push(flag(key));
        out.push(value.clone());
    }
    if let Err(e) = cmd.try_get_matches_from(&out) {
        let origins: Vec<String> = extra
            .iter()
            .map(|(k, v, s)| format!("{k} = {v:?} (from {s})"))
            .collect();
        let msg = e.render().to_string();
        return Err(ConfigError::ConfiguredValue {
            message: msg
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ")
                .to_string(),
            origins,
        });
    }
    Ok((out, report))
}

/// `cai config show`: every key with its value and origin, the key
/// variables of the provider in force (masked), and the files read.
pub fn show(report: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let file = match &report.file.path {
        Some(p) => p.display().to_string(),
        None => format!(
            "none (looked for {})",
            report
                .searched
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let _ = writeln!(out, "config file: {file}");
    let _ = writeln!(
        out,
        ".env: {}",
        match &report.dotenv {
            Some(p) if report.dotenv_vars.is_empty() =>
                format!("{} (set nothing new)", p.display()),
            Some(p) => format!("{} (set {})", p.display(), report.dotenv_vars.join(", ")),
            None => "none".into(),
        }
    );
    if let Some(n) = &report.endpoint {
        let _ = writeln!(out, "endpoint: {n}");
    }
    let width = KEYS.iter().map(|k| k.len()).max().unwrap_or(0);
    for e in &report.entries {
        let v = match e.value.as_deref() {
            // Never echo what may be a key pasted in place of a name.
            Some(v) if e.key == "api_key_env" && !crate::config::is_var_name(v) => {
                "*** (not a variable name)"
            }
            Some(v) => v,
            None => "(unset)",
        };
        let _ = writeln!(out, "{:width$} = {v:<28} # {}", e.key, e.source);
    }
    // Key variables of the provider in force.
    let provider = report
        .entries
        .iter()
        .find(|e| e.key == "provider")
        .and_then(|e| e.value.clone());
    let explicit = report
        .entries
        .iter()
        .find(|e| e.key == "api_key_env")
        .and_then(|e| e.value.clone());
    let vars: Vec<String> = match (&explicit, provider.as_deref()) {
        (Some(v), _) if !crate::config::is_var_name(v) => Vec::new(),
        (Some(v), _) => vec![v.clone()],
        (None, Some(p)) => {
            match <crate::cli::ProviderKind as clap::ValueEnum>::from_str(p, false) {
                Ok(kind) => crate::config::default_key_vars(kind)
                    .iter()
                    .map(|v| v.to_string())
                    .collect(),
                Err(_) => Vec::new(),
            }
        }
        (None, None) => ["OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY"]
            .iter()
            .map(|v| v.to_string())
            .collect(),
    };
    for var in vars {
        let line = match report.var_source(&var) {
            Some(s) => format!("*** (from {s})"),
            None => "not set".to_string(),
        };
        let _ = writeln!(out, "key {var} = {line}");
    }
    for (name, ep) in &report.file.endpoints {
        let fields: Vec<String> = ep.values.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(out, "[endpoints.{name}] {}", fields.join(" "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_lines_parse() {
        let text = "# comment\nexport A=1\nB = \"two words\" # c\nC='x # y'\nD=plain # note\n\nE=\"a\\\"b\"\n";
        let v = parse_dotenv(text).unwrap();
        assert_eq!(
            v,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "x # y".into()),
                ("D".into(), "plain".into()),
                ("E".into(), "a\"b".into()),
            ]
        );
        let err = parse_dotenv("OK=1\nsk-secret-line\n").unwrap_err();
        assert_eq!(
            err,
            DotenvError {
                line: 2,
                why: "expected KEY=VALUE"
            }
        );
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let p = Path::new("cai.toml");
        let e = parse_file(p, "modle = \"x\"").unwrap_err();
        assert!(e.to_string().contains("modle: unknown key"), "{e}");
        let e = parse_file(p, "api_key = \"x\"").unwrap_err();
        assert!(
            e.to_string().contains("keys belong in the environment"),
            "{e}"
        );
        let c = parse_file(
            p,
            "model = \"m\"\nmax_tokens = 64\n[endpoints.judge]\nprovider = \"groq\"\nmodel = \"j\"\n",
        )
        .unwrap();
        assert_eq!(c.values["max_tokens"], "64");
        assert_eq!(c.endpoints["judge"].values["model"], "j");
    }

    #[test]
    fn every_key_is_an_option_of_generate_or_optimize() {
        let cmd = Cli::command();
        let has = |sub: &str, key: &str| {
            cmd.find_subcommand(sub)
                .expect("subcommand")
                .get_arguments()
                .any(|a| a.get_id() == key)
        };
        for &key in KEYS {
            assert!(
                has("generate", key) || has("optimize", key),
                "{key} is not a generate or optimize option"
            );
        }
    }
}
