//! Reply chunking to a channel's `textChunkLimit` (reference §5 "Chunking"): prefer breaking at
//! a paragraph, then a newline, then a sentence end, then whitespace, and only then hard. A
//! chunk never ends inside a code fence: if a fence must be split, it is closed at the end of
//! the chunk and reopened (with its info string) at the start of the next.
//!
//! Limits are counted in Unicode scalar values (`char`s), not bytes.

/// Split `text` into chunks of at most `limit` chars (`limit` is clamped to at least 16).
/// Returns no chunk for empty or whitespace-only text.
pub fn chunk_text(text: &str, limit: usize) -> Vec<String> {
    let limit = limit.max(16);
    let text = text.trim_end();
    if text.trim().is_empty() {
        return Vec::new();
    }
    if text.chars().count() <= limit {
        return vec![text.to_string()];
    }
    let mut out = Vec::new();
    let mut rest: String = text.to_string();
    let mut reopen: Option<String> = None;
    loop {
        if let Some(fence) = reopen.take() {
            rest = format!("{fence}\n{rest}");
        }
        if rest.chars().count() <= limit {
            out.push(rest);
            break;
        }
        // Leave room for a closing fence: "\n```".
        let budget = limit - 4;
        let byte_budget = rest.char_indices().nth(budget).map_or(rest.len(), |(i, _)| i);
        let window = &rest[..byte_budget];
        let cut = best_break(window);
        let (head, tail) = rest.split_at(cut);
        let mut head = head.trim_end().to_string();
        if let Some(open) = open_fence(&head) {
            head.push_str("\n```");
            reopen = Some(open);
        }
        if !head.trim().is_empty() {
            out.push(head);
        }
        rest = tail.trim_start_matches([' ', '\n', '\r', '\t']).to_string();
        if rest.is_empty() {
            break;
        }
    }
    out
}

/// Byte index to cut `window` at: paragraph > newline > sentence end > whitespace > hard.
/// Breaks in the first third of the window are skipped so chunks do not get tiny.
fn best_break(window: &str) -> usize {
    let min = window.len() / 3;
    let ok = |i: usize| i > min;
    if let Some(i) = window.rfind("\n\n").filter(|&i| ok(i)) {
        return i;
    }
    if let Some(i) = window.rfind('\n').filter(|&i| ok(i)) {
        return i;
    }
    for pat in [". ", "! ", "? ", "。"] {
        if let Some(i) = window.rfind(pat).filter(|&i| ok(i)) {
            return i + pat.len();
        }
    }
    if let Some(i) = window.rfind(char::is_whitespace).filter(|&i| ok(i)) {
        return i;
    }
    window.len()
}

/// If `text` ends inside a ``` fence, the opening fence line (e.g. "```rust").
fn open_fence(text: &str) -> Option<String> {
    let mut open: Option<String> = None;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("```") {
            open = match open {
                Some(_) => None,
                None => Some(t.trim_end().to_string()),
            };
        }
    }
    open
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, limit: usize) -> Vec<String> {
        let chunks = chunk_text(text, limit);
        for c in &chunks {
            assert!(c.chars().count() <= limit.max(16), "chunk over limit: {c:?}");
            assert!(!c.trim().is_empty());
        }
        chunks
    }

    #[test]
    fn short_text_is_one_chunk() {
        assert_eq!(check("hello", 4000), vec!["hello"]);
        assert!(check("   ", 4000).is_empty());
    }

    #[test]
    fn prefers_paragraphs_then_sentences() {
        let text = format!("{}\n\n{}", "a".repeat(30), "b".repeat(30));
        assert_eq!(check(&text, 40), vec!["a".repeat(30), "b".repeat(30)]);
        let text = "First sentence here. Second sentence here. Third one.";
        let chunks = check(text, 30);
        assert_eq!(chunks[0], "First sentence here.");
    }

    #[test]
    fn never_loses_words() {
        let text: String = (0..500).map(|i| format!("w{i} ")).collect();
        let chunks = check(&text, 50);
        let joined = chunks.join(" ");
        let a: Vec<&str> = text.split_whitespace().collect();
        let b: Vec<&str> = joined.split_whitespace().collect();
        assert_eq!(a, b);
    }

    #[test]
    fn code_fences_are_closed_and_reopened() {
        let code: String = (0..40).map(|i| format!("let x{i} = {i};\n")).collect();
        let text = format!("Here:\n```rust\n{code}```\nDone.");
        let chunks = check(&text, 120);
        assert!(chunks.len() > 2);
        for c in &chunks {
            assert_eq!(c.matches("```").count() % 2, 0, "balanced fences in {c:?}");
        }
        assert!(chunks[1].starts_with("```rust"));
    }

    #[test]
    fn multibyte_text_splits_on_char_boundaries() {
        let text = "ä".repeat(100);
        let chunks = check(&text, 30);
        assert_eq!(chunks.concat(), text);
    }
}
