//! Dotted config paths (`gateway.auth.token`, `bindings[0].agentId`,
//! `models.providers["my.provider"].baseUrl`) and the get/set/unset helpers behind
//! `pincer config get|set|unset`.
//!
//! Grammar: segments separated by `.`; `[n]` is an array index; `["key"]` is a key written as
//! a JSON string, for keys containing `.`, `[`, `]`, `"` or whitespace. On an array, a plain
//! numeric key (`bindings.0`) also works as an index. The empty path is the root.

use super::error::ConfigError;
use serde_json::{Map, Value};
use std::fmt::Write as _;

/// One step of a path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Seg {
    /// An object key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// Render segments as a dotted path, quoting keys that would not parse back plainly.
pub(crate) fn format_path(segs: &[Seg]) -> String {
    let mut out = String::new();
    for seg in segs {
        match seg {
            Seg::Index(i) => {
                let _ = write!(out, "[{i}]");
            }
            Seg::Key(k) if is_plain_key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Key(k) => {
                out.push('[');
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(']');
            }
        }
    }
    out
}

fn is_plain_key(k: &str) -> bool {
    !k.is_empty() && !k.chars().any(|c| matches!(c, '.' | '[' | ']' | '"') || c.is_whitespace())
}

/// Parse a dotted path into segments. Errors describe the syntax problem.
pub(crate) fn parse_path(path: &str) -> Result<Vec<Seg>, String> {
    let mut segs = Vec::new();
    let mut rest = path;
    let mut expect_key = true; // at the start or right after a '.'
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('[') {
            let close = if after.starts_with('"') {
                quoted_end(after).ok_or_else(|| format!("unterminated [\"...\"] in path {path:?}"))?
            } else {
                after.find(']').ok_or_else(|| format!("missing ']' in path {path:?}"))?
            };
            let inner = &after[..close];
            if inner.starts_with('"') {
                let key: String =
                    serde_json::from_str(inner).map_err(|_| format!("bad quoted key {inner} in path {path:?}"))?;
                segs.push(Seg::Key(key));
            } else {
                let i = inner.parse::<usize>().map_err(|_| format!("bad index [{inner}] in path {path:?}"))?;
                segs.push(Seg::Index(i));
            }
            rest = after[close..].strip_prefix(']').ok_or_else(|| format!("missing ']' in path {path:?}"))?;
            expect_key = false;
        } else if let Some(after) = rest.strip_prefix('.') {
            if expect_key {
                return Err(format!("empty segment in path {path:?}"));
            }
            rest = after;
            expect_key = true;
            if rest.is_empty() {
                return Err(format!("path {path:?} ends with '.'"));
            }
        } else {
            if !expect_key {
                return Err(format!("expected '.' or '[' in path {path:?}"));
            }
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            segs.push(Seg::Key(rest[..end].to_string()));
            rest = &rest[end..];
            expect_key = false;
        }
    }
    Ok(segs)
}

/// Byte offset just past the closing quote of the JSON string that `s` starts with.
fn quoted_end(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(i + 1),
            _ => {}
        }
    }
    None
}

/// Whether a `*` pattern segment list matches concrete segments exactly (same length; `*`
/// matches any key or index).
pub(crate) fn pattern_matches(pattern: &[&str], segs: &[Seg]) -> bool {
    pattern.len() == segs.len()
        && pattern.iter().zip(segs).all(|(p, s)| match s {
            _ if *p == "*" => true,
            Seg::Key(k) => k == p,
            Seg::Index(_) => false,
        })
}

/// The value at `path` (see the module docs for the grammar), or `None` when any segment is
/// missing or the path does not parse. The empty path returns `value` itself.
pub fn get_path<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    let segs = parse_path(path).ok()?;
    let mut cur = value;
    for seg in &segs {
        cur = match (cur, seg) {
            (Value::Object(m), Seg::Key(k)) => m.get(k)?,
            (Value::Array(a), Seg::Index(i)) => a.get(*i)?,
            (Value::Array(a), Seg::Key(k)) => a.get(k.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Set the value at `path` to `new`, creating missing intermediate objects (or an array, for
/// an `[0]` segment). An index may point at an existing element or one past the end (append).
/// The empty path replaces the whole document.
///
/// Errors (with the path walked so far): a malformed path, an index beyond the end of an
/// array, or a segment that would descend into a string, number, boolean or the wrong kind of
/// container. After an error `value` may hold intermediates created before the failing
/// segment; callers should discard it.
pub fn set_path(value: &mut Value, path: &str, new: Value) -> Result<(), ConfigError> {
    let segs = parse_path(path).map_err(|m| ConfigError::new(path, m))?;
    let mut cur = value;
    for (n, seg) in segs.iter().enumerate() {
        if cur.is_null() {
            *cur = match seg {
                Seg::Key(_) => Value::Object(Map::new()),
                Seg::Index(_) => Value::Array(Vec::new()),
            };
        }
        let here = format_path(&segs[..n]);
        let index = match seg {
            Seg::Index(i) => Some(*i),
            Seg::Key(k) if cur.is_array() => k.parse::<usize>().ok(),
            Seg::Key(_) => None,
        };
        cur = match (cur, seg, index) {
            (Value::Array(a), _, Some(i)) => array_slot(a, i, &here)?,
            (Value::Object(m), Seg::Key(k), _) => m.entry(k.clone()).or_insert(Value::Null),
            (other, seg, _) => {
                let what = match seg {
                    Seg::Key(k) => format!("key {k:?}"),
                    Seg::Index(i) => format!("index [{i}]"),
                };
                return Err(ConfigError::new(here, format!("cannot set {what} inside {}", describe_kind(other))));
            }
        };
    }
    *cur = new;
    Ok(())
}

fn array_slot<'a>(a: &'a mut Vec<Value>, i: usize, here: &str) -> Result<&'a mut Value, ConfigError> {
    if i == a.len() {
        a.push(Value::Null);
    }
    let len = a.len();
    a.get_mut(i)
        .ok_or_else(|| ConfigError::new(here, format!("index [{i}] is out of range (the array has {len} items)")))
}

/// Remove the value at `path` and return it; `Ok(None)` when nothing is there. Removing an
/// array element shifts the later ones down. Errors only for a malformed or empty path.
pub fn unset_path(value: &mut Value, path: &str) -> Result<Option<Value>, ConfigError> {
    let mut segs = parse_path(path).map_err(|m| ConfigError::new(path, m))?;
    let Some(last) = segs.pop() else {
        return Err(ConfigError::new("", "cannot unset the whole config"));
    };
    let mut cur = value;
    for seg in &segs {
        let next = match (cur, seg) {
            (Value::Object(m), Seg::Key(k)) => m.get_mut(k),
            (Value::Array(a), Seg::Index(i)) => a.get_mut(*i),
            (Value::Array(a), Seg::Key(k)) => k.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        };
        match next {
            Some(v) => cur = v,
            None => return Ok(None),
        }
    }
    Ok(match (cur, last) {
        (Value::Object(m), Seg::Key(k)) => m.remove(&k),
        (Value::Array(a), Seg::Index(i)) if i < a.len() => Some(a.remove(i)),
        (Value::Array(a), Seg::Key(k)) => match k.parse::<usize>() {
            Ok(i) if i < a.len() => Some(a.remove(i)),
            _ => None,
        },
        _ => None,
    })
}

fn describe_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Interpret a command-line value: a JSON5 value when it parses as one (`true`, `8080`,
/// `"quoted"`, `[1, 2]`, `{mode: "off"}`, `null`), otherwise the text as a plain string
/// (`hybrid`, `sk-abc`). `NaN`/`Infinity`, which JSON cannot hold, stay strings.
pub fn parse_cli_value(s: &str) -> Value {
    match json5::from_str::<Value>(s) {
        Ok(Value::Null) if s.trim() != "null" => Value::String(s.to_string()),
        Ok(v) => v,
        Err(_) => Value::String(s.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip() {
        for p in
            ["", "gateway.port", "bindings[0].agentId", "a[1][2].b", "models.providers[\"a.b\"].baseUrl", "x[\"\"]"]
        {
            let segs = parse_path(p).unwrap();
            assert_eq!(format_path(&segs), p, "{p}");
        }
        for bad in [".a", "a.", "a..b", "a[x]", "a[1", "a[\"b]", "a[1]b"] {
            assert!(parse_path(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn patterns_match_keys_and_indices() {
        let segs = parse_path("models.providers.openai.models[3].cost").unwrap();
        assert!(pattern_matches(&["models", "providers", "*", "models", "*", "cost"], &segs));
        assert!(!pattern_matches(&["models", "providers", "*", "models"], &segs));
        assert!(!pattern_matches(&["models", "*", "*", "models", "0", "cost"], &segs));
    }
}

/// Apply a JSON merge patch (RFC 7396) to `target`: objects merge key by key, `null` deletes a
/// key, anything else (arrays included) replaces the value.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

#[cfg(test)]
mod merge_patch_tests {
    use super::merge_patch;
    use serde_json::json;

    #[test]
    fn rfc7396_examples() {
        // From RFC 7396 appendix A.
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "b"}), json!({"b": "c"}), json!({"a": "b", "b": "c"})),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (json!({"a": "b", "b": "c"}), json!({"a": null}), json!({"b": "c"})),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (json!({"a": {"b": "c"}}), json!({"a": {"b": "d", "c": null}}), json!({"a": {"b": "d"}})),
            (json!({"a": [{"b": "c"}]}), json!({"a": [1]}), json!({"a": [1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (json!({"e": null}), json!({"a": 1}), json!({"e": null, "a": 1})),
            (json!([1, 2]), json!({"a": "b", "c": null}), json!({"a": "b"})),
            (json!({}), json!({"a": {"bb": {"ccc": null}}}), json!({"a": {"bb": {}}})),
        ];
        for (mut target, patch, want) in cases {
            merge_patch(&mut target, &patch);
            assert_eq!(target, want, "patch {patch}");
        }
    }
}
