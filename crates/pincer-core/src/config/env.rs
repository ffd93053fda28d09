//! `${ENV_VAR}` substitution in config string values, with OpenClaw's rules: only uppercase
//! names `[A-Z_][A-Z0-9_]*` are substituted (anything else, like `${lower}`, stays literal);
//! `$${VAR}` is an escape for the literal text `${VAR}`; a variable that is unset (or set to
//! the empty string, as OpenClaw treats it) is an error reported at the value's path.
//! Object keys are never substituted.

use super::error::ConfigError;
use super::path::{format_path, Seg};
use serde_json::Value;

/// Substitute in every string of `value`, recording one error per missing variable use.
/// Subtrees whose path satisfies `skip` are left verbatim.
pub(crate) fn substitute_all(
    value: &mut Value,
    env: &dyn Fn(&str) -> Option<String>,
    skip: &dyn Fn(&[Seg]) -> bool,
    path: &mut Vec<Seg>,
    errors: &mut Vec<ConfigError>,
) {
    if skip(path) {
        return;
    }
    match value {
        Value::String(s) => {
            let mut missing = Vec::new();
            if let Some(new) = substitute(s, env, &mut missing) {
                *s = new;
            }
            for message in missing {
                errors.push(ConfigError::new(format_path(path), message));
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(Seg::Index(i));
                substitute_all(item, env, skip, path, errors);
                path.pop();
            }
        }
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                path.push(Seg::Key(k.clone()));
                substitute_all(v, env, skip, path, errors);
                path.pop();
            }
        }
        _ => {}
    }
}

/// Substitute in one string. Returns `None` when the string has nothing to replace (the
/// common case, no allocation). Missing variables are left as written and described in
/// `missing`.
pub(crate) fn substitute(s: &str, env: &dyn Fn(&str) -> Option<String>, missing: &mut Vec<String>) -> Option<String> {
    if !s.contains("${") {
        return None;
    }
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let (mut i, mut copied) = (0, 0);
    while i < b.len() {
        if b[i] != b'$' {
            i += 1;
            continue;
        }
        // `$${NAME}` → literal `${NAME}`.
        if b.get(i + 1) == Some(&b'$') {
            if let Some(end) = var_ref_end(b, i + 1) {
                out.push_str(&s[copied..i]);
                out.push_str(&s[i + 1..end]);
                i = end;
                copied = end;
                continue;
            }
        } else if let Some(end) = var_ref_end(b, i) {
            let name = &s[i + 2..end - 1];
            match env(name) {
                Some(v) if !v.is_empty() => {
                    out.push_str(&s[copied..i]);
                    out.push_str(&v);
                    copied = end;
                }
                Some(_) => missing.push(format!("environment variable {name} is set but empty")),
                None => missing.push(format!("environment variable {name} is not set")),
            }
            i = end;
            continue;
        }
        i += 1;
    }
    out.push_str(&s[copied..]);
    Some(out)
}

/// If `b[at..]` starts with `${NAME}` (NAME uppercase), the byte offset just past the `}`.
fn var_ref_end(b: &[u8], at: usize) -> Option<usize> {
    if b.get(at) != Some(&b'$') || b.get(at + 1) != Some(&b'{') {
        return None;
    }
    let start = at + 2;
    let first = *b.get(start)?;
    if !(first.is_ascii_uppercase() || first == b'_') {
        return None;
    }
    let mut j = start + 1;
    while let Some(&c) = b.get(j) {
        match c {
            b'}' => return Some(j + 1),
            c if c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_' => j += 1,
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(s: &str) -> (String, Vec<String>) {
        let env = |k: &str| match k {
            "A" => Some("alpha".to_string()),
            "B_2" => Some("β".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let mut missing = Vec::new();
        let out = substitute(s, &env, &mut missing).unwrap_or_else(|| s.to_string());
        (out, missing)
    }

    #[test]
    fn substitution_rules() {
        let cases: &[(&str, &str, &[&str])] = &[
            ("plain", "plain", &[]),
            ("${A}", "alpha", &[]),
            ("x-${A}-${B_2}-y", "x-alpha-β-y", &[]),
            ("$${A}", "${A}", &[]),
            ("$$${A}", "$${A}", &[]),
            ("${lower}", "${lower}", &[]),
            ("${A", "${A", &[]),
            ("$A", "$A", &[]),
            ("cost $5 ${A}", "cost $5 alpha", &[]),
            ("${NOPE}", "${NOPE}", &["environment variable NOPE is not set"]),
            ("${EMPTY}", "${EMPTY}", &["environment variable EMPTY is set but empty"]),
            ("ünï ${A}", "ünï alpha", &[]),
        ];
        for (input, want, want_missing) in cases {
            let (got, missing) = sub(input);
            assert_eq!(&got, want, "input {input:?}");
            assert_eq!(missing, *want_missing, "input {input:?}");
        }
    }
}
