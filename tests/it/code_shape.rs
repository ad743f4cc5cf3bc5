//! Rules about the shape of the source that a reviewer would otherwise have
//! to re-check by hand on every change.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        for entry in entries {
            let path = entry
                .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
                .path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The text without `//` comments (doc comments included), so a comment
/// that mentions the pattern is not a finding. Line breaks are kept, so
/// offsets still map to the same line numbers.
fn strip_line_comments(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            // `://` is a URL inside a string, not a comment.
            Some(i) if !l[..i].ends_with(':') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The generic arguments of the `Result<` that ends at `open` (the index of
/// its `<`), split at top-level commas; `None` when the brackets do not
/// close (not a type, e.g. a comparison).
fn generic_args(text: &str, open: usize) -> Option<(Vec<String>, usize)> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    // Commas inside `(…)` and `[…]` (tuples, arrays) do not split arguments.
    let mut nested = 0usize;
    let mut args = vec![String::new()];
    let mut i = open;
    while i < bytes.len() {
        let c = bytes[i] as char;
        match c {
            '<' => {
                depth += 1;
                if depth > 1 {
                    args.last_mut()?.push(c);
                }
            }
            // `->` inside a closure or fn-pointer type is not a closing bracket.
            '>' if i > 0 && bytes[i - 1] == b'-' => args.last_mut()?.push(c),
            '>' => {
                depth -= 1;
                if depth == 0 {
                    return Some((args.into_iter().map(|a| a.trim().to_string()).collect(), i));
                }
                args.last_mut()?.push(c);
            }
            '(' | '[' => {
                nested += 1;
                args.last_mut()?.push(c);
            }
            ')' | ']' => {
                nested = nested.checked_sub(1)?;
                args.last_mut()?.push(c);
            }
            ',' if depth == 1 && nested == 0 => args.push(String::new()),
            ';' | '{' | '}' if nested == 0 => return None,
            _ => args.last_mut()?.push(c),
        }
        i += 1;
    }
    None
}

/// Each `Result<T, String>` (any `T`, any `Result` path) and each
/// `type Err = String` in `text`, as `line: snippet`.
fn string_errors(text: &str) -> Vec<String> {
    let text = strip_line_comments(text);
    let line_of = |at: usize| text[..at].matches('\n').count() + 1;
    let mut found = Vec::new();
    for (at, _) in text.match_indices("Result<") {
        // `SomeResult<…>` is another type; `io::Result<…>` is still Result.
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let open = at + "Result".len();
        if let Some((args, close)) = generic_args(&text, open) {
            if args.len() == 2 && args[1] == "String" {
                let snippet: String = text[at..=close]
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                found.push(format!("{}: {snippet}", line_of(at)));
            }
        }
    }
    for (at, m) in text.match_indices("type Err = String") {
        found.push(format!("{}: {m}", line_of(at)));
    }
    found
}

#[test]
fn the_scanner_finds_string_errors_and_nothing_else() {
    let bad = "fn a() -> Result<(), String> {}\n\
               fn b() -> std::result::Result<Option<Vec<u8>>,\n    String> {}\n\
               let f = |x: u8| -> Result<Option<u64>, String> { todo!() };\n\
               type Usable<T> = Result<T, String>;\n\
               fn e() -> Result<(String, [u8; 2]), String> {}\n\
               impl FromStr for X { type Err = String; }\n";
    let found = string_errors(bad);
    assert_eq!(found.len(), 6, "{found:?}");
    assert_eq!(found[1], "2: Result<Option<Vec<u8>>, String>");
    let fine = "fn a() -> Result<String, Error> {}\n\
                fn b() -> io::Result<String> {}\n\
                fn c() -> Result<Box<dyn Fn(u8) -> String>, E> {}\n\
                fn f() -> Result<(u8, String), E> {}\n\
                // a comment about Result<(), String>\n\
                fn d() -> ParseResult<u8, String> {}\n\
                let x = if a < b { 1 } else { 2 };\n";
    assert_eq!(string_errors(fine), Vec::<String>::new());
}

/// Errors in the library are typed (a `thiserror` enum that says what went
/// wrong and where), never a bare `String` a caller can only print or
/// pattern-match by prefix.
#[test]
fn no_result_with_a_string_error_in_src() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut findings = Vec::new();
    for path in rust_files(&src) {
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let rel = path
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap_or(&path);
        for f in string_errors(&text) {
            findings.push(format!("{}:{f}", rel.display()));
        }
    }
    assert!(
        findings.is_empty(),
        "{} `Result<_, String>` in src/ (use a typed error):\n{}",
        findings.len(),
        findings.join("\n")
    );
}
