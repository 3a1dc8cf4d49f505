//! Text from a VM, a disk, a plan or a server, made safe to show on a terminal.
//!
//! A VM's display name, a VMDK's `ddb.*` values, an extent's file name or a wave name
//! can hold ESC (cursor moves, screen clears, window titles, OSC 8 links), BEL, CR
//! (overwrite the line), C1 controls (CSI as one byte, U+009B) and Unicode bidi
//! overrides (U+202E makes `gpj.exe` read `exe.jpg`). [`escape`] shows each of them
//! visibly (`\x1b`, `\r`, `\u{9b}`, `\u{202e}`) and leaves every other character as it
//! is; every human line the CLI prints goes through it. JSON output needs none of this:
//! serde_json escapes control characters itself (bidi characters are data there).

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether `c` must not reach a terminal as it is.
fn is_unsafe(c: char) -> bool {
    c.is_control() // C0, DEL and C1
        || matches!(c,
            // LRM, RLM, ALM: invisible direction marks.
            '\u{200e}' | '\u{200f}' | '\u{061c}'
            // LRE, RLE, PDF, LRO, RLO: embeddings and overrides.
            | '\u{202a}'..='\u{202e}'
            // LRI, RLI, FSI, PDI: isolates.
            | '\u{2066}'..='\u{2069}')
}

/// `s` with every control character and bidi override shown as an escape, newlines
/// included (one value never spans two lines).
pub fn escape(s: &str) -> Cow<'_, str> {
    escape_keeping(s, false)
}

/// As [`escape`], but a newline stays a newline: for messages of several lines that
/// v2k composed itself (a list of plan problems) and that quote untrusted values.
pub fn escape_lines(s: &str) -> Cow<'_, str> {
    escape_keeping(s, true)
}

fn escape_keeping(s: &str, newline: bool) -> Cow<'_, str> {
    if !s.chars().any(|c| is_unsafe(c) && !(newline && c == '\n')) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' if newline => out.push('\n'),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_unsafe(c) && (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Serialized JSON with the characters serde_json leaves raw but a terminal would act
/// on (C1 controls, bidi overrides; serde_json escapes C0 itself) written as `\uXXXX`
/// escapes: the same JSON value, safe to print. Such characters can only sit inside
/// JSON strings, where `\uXXXX` means exactly them.
pub fn json_safe(json: &str) -> Cow<'_, str> {
    if !json.chars().any(is_unsafe) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 12);
    for c in json.chars() {
        if is_unsafe(c) {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A path as [`escape`] shows it (lossy for bytes that are not UTF-8).
pub fn escape_path(p: &std::path::Path) -> String {
    escape(&p.to_string_lossy()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_escape_sequences_and_bell_visibly() {
        assert_eq!(escape("a\x1b[2Jb\x07"), "a\\x1b[2Jb\\x07");
        assert_eq!(escape("x\ry\n\tz\x7f"), "x\\ry\\n\\tz\\x7f");
    }

    #[test]
    fn shows_c1_and_bidi_overrides_visibly() {
        assert_eq!(escape("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(escape("evil\u{202e}gpj.exe"), "evil\\u{202e}gpj.exe");
        assert_eq!(escape("\u{2066}x\u{2069}"), "\\u{2066}x\\u{2069}");
    }

    #[test]
    fn leaves_ordinary_text_alone() {
        assert!(matches!(escape("Debian 12 — café ☕"), Cow::Borrowed(_)));
        assert_eq!(escape_lines("line 1\nline\x1b 2"), "line 1\nline\\x1b 2");
    }

    #[test]
    fn json_keeps_its_value_without_raw_c1_or_bidi() {
        let raw = "{\"name\":\"a\u{9b}b\u{202e}c\"}";
        assert_eq!(json_safe(raw), "{\"name\":\"a\\u009bb\\u202ec\"}");
    }
}
