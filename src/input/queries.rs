//! The query files of `cai optimize`: training/held-out queries and the
//! example bank, read with the prompt reader (CSV with a header row, or
//! JSONL), so they get the same checks and error messages as `--prompts`.
//!
//! - Queries: the query column is `--prompt-column`'s rule (`query` when
//!   present, else `prompt`, `instruction`, …, else the only column besides
//!   `id`).
//! - Examples: a `query` and an `answer` column (CSV) or field (JSONL), or
//!   a JSON array of `{"query", "answer"}` objects (`examples.json` of a
//!   search).

use std::path::Path;

use super::{prompts, InputError, InputErrors, Location, PromptReader, PromptRecord, PromptSpec};

/// Every record of a file, checked (blank texts, duplicate ids, bad rows).
fn read_column(path: &Path, column: Option<&str>) -> Result<Vec<PromptRecord>, InputErrors> {
    let spec = PromptSpec {
        column: column.map(str::to_string),
        ..PromptSpec::new(path)
    };
    prompts::validate(&spec)?;
    let reader = PromptReader::open(&spec)?;
    let mut out = Vec::new();
    for rec in reader {
        out.push(rec?);
    }
    if out.is_empty() {
        return Err(InputError::new(path, Location::File, "no rows").into());
    }
    Ok(out)
}

/// Whether the file names a `query` column (CSV header or first JSONL row).
fn has_query_column(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim_start_matches('\u{feff}');
    match serde_json::from_str::<serde_json::Value>(first) {
        Ok(serde_json::Value::Object(o)) => o.contains_key("query"),
        _ => first
            .split(',')
            .any(|c| c.trim().trim_matches('"') == "query"),
    }
}

/// The queries of `--queries FILE`.
pub fn read_queries(path: &Path) -> Result<Vec<PromptRecord>, InputErrors> {
    let column = has_query_column(path).then_some("query");
    read_column(path, column)
}

/// One in-context example: a query and its answer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Example {
    pub query: String,
    pub answer: String,
}

/// A JSON array of examples; `None` when the file is not one (then it is
/// read as CSV or JSONL).
fn read_example_array(path: &Path) -> Option<Result<Vec<Example>, InputErrors>> {
    let text = std::fs::read_to_string(path).ok()?;
    let t = text.trim_start_matches('\u{feff}').trim_start();
    if !t.starts_with('[') {
        return None;
    }
    let parsed = serde_json::from_str::<Vec<Example>>(t).map_err(|e| {
        InputError::new(
            path,
            Location::Line(e.line() as u64),
            format!("not a JSON array of {{\"query\", \"answer\"}} objects: {e}"),
        )
        .into()
    });
    Some(parsed.and_then(|list| {
        if list.is_empty() {
            return Err(InputError::new(path, Location::File, "no examples").into());
        }
        match list
            .iter()
            .position(|e| e.query.trim().is_empty() || e.answer.trim().is_empty())
        {
            Some(i) => Err(InputError::new(
                path,
                Location::Path(format!("[{i}]")),
                "a blank query or answer",
            )
            .into()),
            None => Ok(list),
        }
    }))
}

/// The example bank of `--examples FILE` (`query` and `answer` columns, or
/// a JSON array).
pub fn read_examples(path: &Path) -> Result<Vec<Example>, InputErrors> {
    if let Some(got) = read_example_array(path) {
        return got;
    }
    let queries = read_column(path, Some("query"));
    let answers = read_column(path, Some("answer"));
    match (queries, answers) {
        (Ok(q), Ok(a)) => Ok(q
            .into_iter()
            .zip(a)
            .map(|(q, a)| Example {
                query: q.text,
                answer: a.text,
            })
            .collect()),
        (Err(mut e), Err(f)) => {
            e.0.extend(f.0);
            Err(e)
        }
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_take_the_query_column_and_examples_pair_up() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("q.csv");
        std::fs::write(&q, "id,query,notes\na,What is 2+2?,x\nb,Name a colour.,y\n").unwrap();
        let recs = read_queries(&q).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1].id, "b");
        assert_eq!(recs[1].text, "Name a colour.");

        let e = dir.path().join("e.jsonl");
        std::fs::write(
            &e,
            "{\"query\": \"Hi?\", \"answer\": \"Hello.\"}\n{\"query\": \"Bye?\"}\n",
        )
        .unwrap();
        let err = read_examples(&e).unwrap_err().to_string();
        assert!(err.contains("e.jsonl:2: no `answer` field"), "{err}");

        let j = dir.path().join("examples.json");
        std::fs::write(&j, r#"[{"query": "Hi?", "answer": "Hello."}]"#).unwrap();
        assert_eq!(read_examples(&j).unwrap()[0].answer, "Hello.");
        std::fs::write(&j, r#"[{"query": "Hi?", "answer": " "}]"#).unwrap();
        let err = read_examples(&j).unwrap_err().to_string();
        assert!(err.contains("[0]: a blank query or answer"), "{err}");
    }
}
