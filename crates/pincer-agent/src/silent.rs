//! The silent reply token. An agent that decides not to answer replies `NO_REPLY`; the
//! gateway then records a deliberate silence instead of posting (OpenClaw: "the silent
//! token `NO_REPLY` (case-insensitive) suppresses the reply").

/// The silent reply token.
pub const SILENT_TOKEN: &str = "NO_REPLY";

/// Characters tolerated around the token: whitespace, and punctuation or markdown that
/// models wrap it in (`NO_REPLY.`, `**NO_REPLY**`, `` `NO_REPLY` ``, `"NO_REPLY"`).
fn is_wrapping(c: char) -> bool {
    c.is_whitespace() || matches!(c, '.' | '!' | '*' | '_' | '`' | '"' | '\'' | '“' | '”')
}

/// True when the whole reply is the silent token: case-insensitive, ignoring surrounding
/// whitespace and the wrapping characters above. Conservative on purpose: any other word
/// (`"NO_REPLY because …"`, `"no reply"`) makes the reply visible.
pub fn is_silent(text: &str) -> bool {
    text.trim_matches(is_wrapping).eq_ignore_ascii_case(SILENT_TOKEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_cases() {
        for t in [
            "NO_REPLY",
            "no_reply",
            "  No_Reply\n",
            "NO_REPLY.",
            "**NO_REPLY**",
            "`NO_REPLY`",
            "\"NO_REPLY\"",
            "_NO_REPLY_",
            "NO_REPLY!",
        ] {
            assert!(is_silent(t), "{t:?}");
        }
        for t in [
            "",
            "NO",
            "NO REPLY",
            "NOREPLY",
            "NO_REPLY because I am busy",
            "I will say NO_REPLY",
            "NO_REPLY?",
            "(NO_REPLY)",
            "NO_REPLY NO_REPLY",
            "NO_REPLY:",
        ] {
            assert!(!is_silent(t), "{t:?}");
        }
    }
}
