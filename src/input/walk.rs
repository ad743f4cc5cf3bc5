//! Reading a JSON document field by field, collecting every problem with
//! its JSON path instead of stopping at the first, so the user can fix a
//! file in one go. The constitution and the calibration file are read
//! with it.

use std::path::Path;

use serde_json::{Map, Value};

use super::{InputError, Location};

/// A JSON document's reader: the file it came from and every problem found
/// so far.
pub struct Walker<'a> {
    file: &'a Path,
    /// Every problem found so far, in the order found.
    pub errors: Vec<InputError>,
}

/// The JSON path of `key` inside the object at `path` (`""` is the root).
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl<'a> Walker<'a> {
    pub fn new(file: &'a Path) -> Self {
        Self {
            file,
            errors: Vec::new(),
        }
    }

    /// Records a problem at JSON path `path`.
    pub fn err(&mut self, path: &str, msg: impl Into<String>) {
        self.errors.push(InputError::new(
            self.file,
            Location::Path(path.to_string()),
            msg,
        ));
    }

    /// A required, non-blank string field of `obj`.
    pub fn string(&mut self, obj: &Map<String, Value>, path: &str, key: &str) -> Option<String> {
        let p = join(path, key);
        match obj.get(key) {
            None | Some(Value::Null) => {
                self.err(&p, "missing");
                None
            }
            Some(Value::String(s)) if s.trim().is_empty() => {
                self.err(&p, "empty");
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.err(
                    &p,
                    format!(
                        "expected a string, found {}",
                        crate::input::json_kind(other)
                    ),
                );
                None
            }
        }
    }

    /// An optional string field: absent, null and "" all mean none.
    pub fn opt_string(
        &mut self,
        obj: &Map<String, Value>,
        path: &str,
        key: &str,
    ) -> Option<String> {
        match obj.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.trim().is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.err(
                    &join(path, key),
                    format!(
                        "expected a string, found {}",
                        crate::input::json_kind(other)
                    ),
                );
                None
            }
        }
    }

    /// An array field; `required` arrays must also be non-empty.
    pub fn array<'v>(
        &mut self,
        obj: &'v Map<String, Value>,
        key: &str,
        required: bool,
    ) -> &'v [Value] {
        match obj.get(key) {
            None | Some(Value::Null) if required => {
                self.err(key, "missing");
                &[]
            }
            None | Some(Value::Null) => &[],
            Some(Value::Array(a)) => {
                if required && a.is_empty() {
                    self.err(key, "must not be empty");
                }
                a
            }
            Some(other) => {
                self.err(
                    key,
                    format!(
                        "expected an array, found {}",
                        crate::input::json_kind(other)
                    ),
                );
                &[]
            }
        }
    }

    /// `v` as an object, or a problem at `path`.
    pub fn object<'v>(&mut self, v: &'v Value, path: &str) -> Option<&'v Map<String, Value>> {
        let o = v.as_object();
        if o.is_none() {
            self.err(
                path,
                format!("expected an object, found {}", crate::input::json_kind(v)),
            );
        }
        o
    }

    /// A required finite number field `key` of `obj` (0 when it is not one).
    pub fn number(&mut self, obj: &Map<String, Value>, path: &str, key: &str) -> f64 {
        let p = join(path, key);
        match obj.get(key) {
            Some(v @ Value::Number(_)) => match v.as_f64() {
                Some(x) if x.is_finite() => return x,
                _ => self.err(&p, "not a finite number"),
            },
            None => self.err(&p, "missing"),
            Some(v) => self.err(
                &p,
                format!("expected a number, found {}", crate::input::json_kind(v)),
            ),
        }
        0.0
    }
}
