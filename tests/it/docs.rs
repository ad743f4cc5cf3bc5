//! The documentation stays in step with the code: every long option of every
//! command is named on that command's page in `docs/`, the README stays short
//! enough to read to the end, and no relative link in README.md or docs/*.md
//! points at a file (or a heading) that is not there. The flags are read from clap's own
//! description of the command line, so a flag added without a line in its page
//! fails here, naming the page.

use std::path::{Path, PathBuf};

use cai::cli::Cli;
use clap::CommandFactory;

/// The README's size bound: the two commands and the tour must stay near the top.
const README_MAX_BYTES: u64 = 26_000;

/// Page of each top-level command; its subcommands (`optimize eval`,
/// `model fetch`, `config show`) share it.
const PAGES: &[(&str, &str)] = &[
    ("generate", "docs/generate.md"),
    ("label", "docs/label.md"),
    ("validate", "docs/validate.md"),
    ("render", "docs/render.md"),
    ("model", "docs/model.md"),
    ("models", "docs/providers.md"),
    ("config", "docs/config.md"),
    ("completions", "docs/config.md"),
    ("man", "docs/config.md"),
    ("report", "docs/report.md"),
    ("serve", "docs/serve.md"),
    ("merge", "docs/merge.md"),
    ("optimize", "docs/optimize.md"),
];

/// Where the options of `cai` itself (global ones such as `--log-level`) are described.
const GLOBAL_PAGE: &str = "docs/config.md";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// True when `text` names `--flag` as a whole option: `--batch` does not
/// count as a mention because `--batch-poll` is there.
fn mentions(text: &str, flag: &str) -> bool {
    let needle = format!("--{flag}");
    text.match_indices(&needle).any(|(at, _)| {
        let before_ok = text[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-'));
        let after_ok = text[at + needle.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        before_ok && after_ok
    })
}

/// Long names (and visible long aliases) of the options `cmd` itself defines,
/// leaving out clap's own `--help`/`--version`, hidden options and, when
/// `skip_global`, options inherited from `cai` itself.
fn long_flags(cmd: &clap::Command, skip_global: bool) -> Vec<String> {
    let mut flags = Vec::new();
    for arg in cmd.get_arguments() {
        if arg.is_hide_set() || (skip_global && arg.is_global_set()) {
            continue;
        }
        let Some(long) = arg.get_long() else { continue };
        if long == "help" || long == "version" {
            continue;
        }
        flags.push(long.to_string());
        if let Some(aliases) = arg.get_visible_aliases() {
            flags.extend(aliases.into_iter().map(str::to_string));
        }
    }
    flags
}

/// Every (command path, flag) pair under `cmd`, depth first.
fn walk(cmd: &clap::Command, path: &str, out: &mut Vec<(String, String)>) {
    for flag in long_flags(cmd, true) {
        out.push((path.to_string(), flag));
    }
    for sub in cmd.get_subcommands() {
        walk(sub, &format!("{path} {}", sub.get_name()), out);
    }
}

#[test]
fn docs_name_every_flag_of_every_command_on_its_page() {
    let root = Cli::command();
    let mut missing = Vec::new();

    let global = read(GLOBAL_PAGE);
    for flag in long_flags(&root, false) {
        if !mentions(&global, &flag) {
            missing.push(format!("{GLOBAL_PAGE}: cai --{flag}"));
        }
    }

    for sub in root.get_subcommands() {
        let name = sub.get_name();
        if name == "help" {
            continue;
        }
        let Some((_, page)) = PAGES.iter().find(|(cmd, _)| *cmd == name) else {
            missing.push(format!(
                "command `cai {name}` has no page: add it to PAGES in tests/it/docs.rs"
            ));
            continue;
        };
        let text = read(page);
        let mut flags = Vec::new();
        walk(sub, &format!("cai {name}"), &mut flags);
        for (path, flag) in flags {
            if !mentions(&text, &flag) {
                missing.push(format!("{page}: {path} --{flag}"));
            }
        }
    }

    assert!(
        missing.is_empty(),
        "{} flag(s) not described on their docs page:\n  {}",
        missing.len(),
        missing.join("\n  ")
    );
}

#[test]
fn docs_flag_mention_is_a_whole_option() {
    assert!(mentions("use `--batch` here", "batch"));
    assert!(mentions("--batch", "batch"));
    assert!(!mentions("use `--batch-poll 60`", "batch"));
    assert!(!mentions("the --max-tokens value", "tokens"));
    assert!(mentions("`--out DIR`, `--open`", "open"));
}

#[test]
fn docs_readme_stays_short() {
    let path = repo().join("README.md");
    let len = std::fs::metadata(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .len();
    assert!(
        len < README_MAX_BYTES,
        "README.md is {len} bytes; keep it under {README_MAX_BYTES} and move reference text to docs/"
    );
}

/// Link targets of a Markdown text, outside fenced code blocks and inline code.
fn link_targets(text: &str) -> Vec<(usize, String)> {
    let mut targets = Vec::new();
    let mut fenced = false;
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Drop inline code spans: `a[0](x)` in code is not a link.
        let prose: String = line
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, part)| part)
            .collect::<Vec<_>>()
            .join(" ");
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            let target = after[..end].split_whitespace().next().unwrap_or("");
            targets.push((n + 1, target.to_string()));
            rest = &after[end..];
        }
    }
    targets
}

/// GitHub's anchors of a Markdown page's headings: lower case, punctuation
/// dropped, spaces turned into hyphens (`## Batch APIs: half` → `batch-apis-half`).
fn anchors(text: &str) -> Vec<String> {
    let mut fenced = false;
    let mut found = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        found.push(slug);
    }
    found
}

#[test]
fn docs_relative_links_point_to_existing_files() {
    let mut pages: Vec<PathBuf> = vec![repo().join("README.md")];
    let docs = repo().join("docs");
    let entries = std::fs::read_dir(&docs).unwrap_or_else(|e| panic!("{}: {e}", docs.display()));
    for entry in entries {
        let path = entry.expect("docs/ entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    assert!(pages.len() > 5, "docs/ holds too few pages: {pages:?}");

    let mut broken = Vec::new();
    let mut checked = 0;
    for page in &pages {
        let text =
            std::fs::read_to_string(page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
        let shown = page
            .strip_prefix(repo())
            .unwrap_or(page)
            .display()
            .to_string();
        for (line, target) in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let resolved = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap_or(repo()).join(file)
            };
            if !resolved.exists() {
                broken.push(format!("{shown}:{line}: {target}: no such file"));
                continue;
            }
            // An anchor into a Markdown page must name one of its headings.
            if !anchor.is_empty() && resolved.extension().is_some_and(|e| e == "md") {
                let linked = std::fs::read_to_string(&resolved)
                    .unwrap_or_else(|e| panic!("{}: {e}", resolved.display()));
                if !anchors(&linked).iter().any(|a| a == anchor) {
                    broken.push(format!("{shown}:{line}: {target}: no such heading"));
                }
            }
        }
    }
    assert!(
        checked > 10,
        "only {checked} relative links found; is the parser broken?"
    );
    assert!(
        broken.is_empty(),
        "broken links:\n  {}",
        broken.join("\n  ")
    );
}

#[test]
fn docs_anchor_follows_github() {
    let page = "# `cai merge`: one dataset\n```\n# not a heading\n```\n## Batch APIs: half the price, a day's patience\n";
    assert_eq!(
        anchors(page),
        [
            "cai-merge-one-dataset",
            "batch-apis-half-the-price-a-days-patience"
        ]
    );
}

#[test]
fn docs_link_parser_skips_code() {
    let text = "see [generate](docs/generate.md#x) and `a[0](b)`\n```\n[x](nope.md)\n```\n![img](report.png)";
    let targets: Vec<String> = link_targets(text).into_iter().map(|(_, t)| t).collect();
    assert_eq!(targets, ["docs/generate.md#x", "report.png"]);
}
