//! Answer pairs to label (`cai label --pairs`).
//!
//! CSV with a header row, or JSONL (`.jsonl`/`.json`). Columns `prompt`,
//! `response_a`, `response_b`; optional `id` (else the 0-based row index),
//! `model_a`, `model_b` and the human labels `winner_model_a`,
//! `winner_model_b`, `winner_tie` (0/1, `true`/`false`, `1.0`) — the LMSYS
//! Chatbot Arena preference-prediction format. A cell that holds a JSON list
//! of turns (`["turn 1", "turn 2"]`, as in that data; in JSONL also a real
//! array) is joined into one text with a blank line between turns, `null`
//! turns skipped: the judge sees every prompt turn and each whole answer.

use std::collections::HashSet;
use std::io::BufRead;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::input::{InputError, InputErrors, Location};

/// A human preference.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Winner {
    A,
    B,
    /// Also what a `judgments.jsonl` line without a prediction reads as.
    #[default]
    Tie,
}

/// One pair to label.
#[derive(Clone, Debug)]
pub struct PairRecord {
    pub id: String,
    pub prompt: String,
    pub response_a: String,
    pub response_b: String,
    pub model_a: Option<String>,
    pub model_b: Option<String>,
    pub human: Option<Winner>,
}

/// Text of a cell: a JSON list of turns is joined (see the module docs).
pub fn cell_text(v: &Value) -> String {
    match v {
        Value::String(s) => {
            let t = s.trim_start();
            if t.starts_with('[') {
                if let Ok(Value::Array(items)) = serde_json::from_str::<Value>(t) {
                    return join_turns(&items);
                }
            }
            s.clone()
        }
        Value::Array(items) => join_turns(items),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn join_turns(items: &[Value]) -> String {
    items
        .iter()
        .filter(|v| !v.is_null())
        .map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

fn flag(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_f64().map(|x| x != 0.0),
        Value::String(s) => match s.trim().to_lowercase().as_str() {
            "1" | "1.0" | "true" | "yes" => Some(true),
            "0" | "0.0" | "false" | "no" | "" => Some(false),
            _ => None,
        },
        Value::Null => Some(false),
        _ => None,
    }
}

/// Reads the pairs file into records (rows are small next to the requests
/// they cost; the file is read once up front so every problem is reported
/// before anything is sent).
///
/// Long because it is the whole file format in one place: both layouts (CSV,
/// JSONL), every column and every row checked, and every problem collected
/// with its line before one error is returned.
pub fn read_pairs(path: &Path, limit: Option<u64>) -> Result<Vec<PairRecord>, InputErrors> {
    let err = |at: Location, m: String| InputError::new(path, at, m);
    let jsonl = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("jsonl" | "json" | "ndjson")
    );
    let mut rows: Vec<(u64, serde_json::Map<String, Value>)> = Vec::new();
    if jsonl {
        let f = std::fs::File::open(path)
            .map_err(|e| err(Location::File, format!("cannot open pairs: {e}")))?;
        for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line = line.map_err(|e| err(Location::Line(i as u64 + 1), e.to_string()))?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(&line) {
                Ok(Value::Object(o)) => rows.push((i as u64 + 1, o)),
                Ok(_) => {
                    return Err(err(
                        Location::Line(i as u64 + 1),
                        "expected a JSON object".into(),
                    )
                    .into())
                }
                Err(e) => {
                    return Err(
                        err(Location::Line(i as u64 + 1), format!("not valid JSON: {e}")).into(),
                    )
                }
            }
            if limit.is_some_and(|l| rows.len() as u64 >= l) {
                break;
            }
        }
    } else {
        match crate::input::prompts::unterminated_quote(path) {
            Ok(Some(line)) => {
                return Err(err(
                    Location::Line(line),
                    "a quoted field opened here is never closed (a missing `\"`)".into(),
                )
                .into())
            }
            Ok(None) => {}
            Err(e) => return Err(err(Location::File, format!("cannot read pairs: {e}")).into()),
        }
        let mut r = csv::ReaderBuilder::new()
            .flexible(false)
            .from_path(path)
            .map_err(|e| err(Location::File, format!("cannot open pairs: {e}")))?;
        let headers: Vec<String> = r
            .headers()
            .map_err(|e| err(Location::Line(1), e.to_string()))?
            .iter()
            .map(|h| h.trim_start_matches('\u{feff}').trim().to_string())
            .collect();
        for rec in r.records() {
            let rec = rec.map_err(|e| {
                let line = e.position().map_or(0, |p| p.line());
                err(Location::Line(line), e.to_string())
            })?;
            let line = rec.position().map_or(0, |p| p.line());
            let o = headers
                .iter()
                .zip(rec.iter())
                .map(|(h, v)| (h.clone(), Value::String(v.to_string())))
                .collect();
            rows.push((line, o));
            if limit.is_some_and(|l| rows.len() as u64 >= l) {
                break;
            }
        }
    }
    let mut errors = Vec::new();
    let mut ids = HashSet::new();
    let mut out = Vec::with_capacity(rows.len());
    for (index, (line, o)) in rows.into_iter().enumerate() {
        let at = Location::Line(line);
        let text = |k: &str| o.get(k).map(cell_text);
        let (Some(prompt), Some(a), Some(b)) =
            (text("prompt"), text("response_a"), text("response_b"))
        else {
            errors.push(err(
                at,
                "needs the columns prompt, response_a and response_b".into(),
            ));
            if errors.len() >= 20 {
                break;
            }
            continue;
        };
        if prompt.trim().is_empty() || a.trim().is_empty() || b.trim().is_empty() {
            errors.push(err(at.clone(), "blank prompt or response".into()));
        }
        let id = match o.get("id") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
            Some(Value::Number(n)) => n.to_string(),
            _ => index.to_string(),
        };
        if !ids.insert(id.clone()) {
            errors.push(err(at.clone(), format!("duplicate id `{id}`")));
        }
        let wins: Vec<Option<bool>> = ["winner_model_a", "winner_model_b", "winner_tie"]
            .iter()
            .map(|k| o.get(*k).map_or(Some(false), flag))
            .collect();
        let any_col = ["winner_model_a", "winner_model_b", "winner_tie"]
            .iter()
            .any(|k| {
                o.get(*k)
                    .is_some_and(|v| !matches!(v, Value::Null) && v.as_str() != Some(""))
            });
        let human = match (any_col, wins.as_slice()) {
            (false, _) => None,
            (true, [Some(true), Some(false), Some(false)]) => Some(Winner::A),
            (true, [Some(false), Some(true), Some(false)]) => Some(Winner::B),
            (true, [Some(false), Some(false), Some(true)]) => Some(Winner::Tie),
            _ => {
                errors.push(err(
                    at.clone(),
                    "winner_model_a, winner_model_b and winner_tie must hold exactly one 1".into(),
                ));
                None
            }
        };
        let model = |k: &str| {
            o.get(k)
                .map(cell_text)
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        out.push(PairRecord {
            id,
            prompt,
            response_a: a,
            response_b: b,
            model_a: model("model_a"),
            model_b: model("model_b"),
            human,
        });
        if errors.len() >= 20 {
            break;
        }
    }
    if out.is_empty() && errors.is_empty() {
        errors.push(err(Location::File, "no pairs".into()));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(InputErrors(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_lists_are_joined_and_plain_text_kept() {
        assert_eq!(
            cell_text(&Value::String(r#"["Hi", null, "More"]"#.into())),
            "Hi\n\nMore"
        );
        assert_eq!(cell_text(&Value::String("[not json".into())), "[not json");
        assert_eq!(cell_text(&serde_json::json!(["x", "y"])), "x\n\ny");
    }

    #[test]
    fn pairs_read_from_jsonl_and_csv_with_every_problem_reported() {
        let dir = tempfile::tempdir().unwrap();
        let jsonl = dir.path().join("p.jsonl");
        std::fs::write(
            &jsonl,
            concat!(
                r#"{"id": 7, "prompt": ["Hi", "And?"], "response_a": ["a1", "a2"], "response_b": "b", "model_a": "m", "winner_model_a": 0, "winner_model_b": 1, "winner_tie": 0}"#,
                "\n\n",
                r#"{"prompt": "p", "response_a": "a", "response_b": "b"}"#,
                "\n"
            ),
        )
        .unwrap();
        let rows = read_pairs(&jsonl, None).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].id, "7");
        assert_eq!(rows[0].prompt, "Hi\n\nAnd?");
        assert_eq!(rows[0].response_a, "a1\n\na2");
        assert_eq!(rows[0].model_a.as_deref(), Some("m"));
        assert_eq!(rows[0].model_b, None);
        assert_eq!(rows[0].human, Some(Winner::B));
        assert_eq!(rows[1].id, "1");
        assert_eq!(rows[1].human, None);

        let csv = dir.path().join("p.csv");
        std::fs::write(
            &csv,
            "id,prompt,response_a,response_b,winner_model_a,winner_model_b,winner_tie\nx,p,a,b,1,1,0\nx,p,,b,0,0,1\n",
        )
        .unwrap();
        let errs = read_pairs(&csv, None).unwrap_err().to_string();
        assert!(
            errs.contains(
                "p.csv:2: winner_model_a, winner_model_b and winner_tie must hold exactly one 1"
            ),
            "{errs}"
        );
        assert!(errs.contains("p.csv:3: blank prompt or response"), "{errs}");
        assert!(errs.contains("p.csv:3: duplicate id `x`"), "{errs}");
    }
}
