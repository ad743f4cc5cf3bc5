//! Escaping for everything that goes from the data into the page.
//!
//! Prompts and answers are hostile by assumption: `<script>`, quotes,
//! template syntax, bidirectional overrides and control characters must all
//! show up as text. [`text`] and [`attr`] escape the five HTML-significant
//! characters; [`text`] also makes invisible controls visible (a bidi
//! override would otherwise silently reorder what the reader sees, the
//! "Trojan Source" trick) and turns C0 controls into their Unicode control
//! pictures, since `NUL` and friends are parse errors in HTML.
//! [`json_for_script`] makes JSON safe to embed in a `<script>` element.

use std::fmt::Write as _;

/// Appends `s` escaped for an HTML text node.
pub fn push_text(out: &mut String, s: &str) {
    escape_into(out, s, true);
}

/// `s` escaped for an HTML text node.
pub fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    push_text(&mut out, s);
    out
}

/// `s` escaped for a double- or single-quoted attribute value.
pub fn attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    escape_into(&mut out, s, false);
    out
}

/// Characters that change the direction of the text after them until a
/// matching pop: shown as a visible marker instead of taking effect.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

fn escape_into(out: &mut String, s: &str, in_text: bool) {
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let rep: Option<&str> = match c {
            '&' => Some("&amp;"),
            '<' => Some("&lt;"),
            '>' => Some("&gt;"),
            '"' => Some("&quot;"),
            '\'' => Some("&#39;"),
            _ => None,
        };
        let special = rep.is_some()
            || (c.is_control() && c != '\n' && c != '\t' && c != '\r')
            || is_bidi_control(c);
        if !special {
            continue;
        }
        out.push_str(&s[start..i]);
        start = i + c.len_utf8();
        if let Some(r) = rep {
            out.push_str(r);
        } else if (c as u32) < 0x20 {
            // U+2400.. "control pictures": ␀ ␁ … ␟, visible and harmless.
            let pic = char::from_u32(0x2400 + c as u32).unwrap_or('\u{FFFD}');
            marker(out, &pic.to_string(), c, in_text);
        } else {
            marker(out, &format!("U+{:04X}", c as u32), c, in_text);
        }
    }
    out.push_str(&s[start..]);
}

fn marker(out: &mut String, shown: &str, c: char, in_text: bool) {
    if in_text {
        let _ = write!(
            out,
            "<span class=\"ctl\" title=\"control character U+{:04X}\">{shown}</span>",
            c as u32
        );
    } else {
        out.push_str(shown);
    }
}

/// `value` as JSON that can sit inside `<script type="application/json">`
/// (or any script element) without ending it early or changing meaning:
/// `<`, `>` and `&` become `\u003c`-style escapes, which JSON allows only
/// inside strings — exactly where they can occur — and U+2028/U+2029,
/// which older JavaScript parsers treat as line breaks, are escaped too.
pub fn json_for_script<T: serde::Serialize>(value: &T) -> Result<String, serde_json::Error> {
    let raw = serde_json::to_string(value)?;
    let mut out = String::with_capacity(raw.len() + 16);
    for c in raw.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// The first `n` characters of `s` on one line (whitespace runs become
/// one space), with `…` when cut.
pub fn one_line(s: &str, n: usize) -> String {
    // Reads only as far as the first `n` characters need: the report calls
    // this for every round of every row.
    let mut out = String::new();
    let mut chars = 0;
    for word in s.split_whitespace() {
        let sep = usize::from(chars > 0);
        let len = word.chars().count();
        if chars + sep + len > n {
            if sep == 1 {
                out.push(' ');
                chars += 1;
            }
            out.extend(word.chars().take(n.saturating_sub(1).saturating_sub(chars)));
            // Keep at most n - 1 characters before the ellipsis.
            while out.chars().count() > n.saturating_sub(1) {
                out.pop();
            }
            out.push('…');
            return out;
        }
        if sep == 1 {
            out.push(' ');
        }
        out.push_str(word);
        chars += sep + len;
    }
    out
}

/// The `'sha256-…'` CSP source of an inline element's exact content
/// (the digest in standard, padded base64, as CSP requires).
pub fn csp_hash(content: &str) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(content.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_matches_joining_then_cutting() {
        let naive = |s: &str, n: usize| {
            let one = s.split_whitespace().collect::<Vec<_>>().join(" ");
            if one.chars().count() > n {
                one.chars().take(n.saturating_sub(1)).chain(['…']).collect()
            } else {
                one
            }
        };
        let texts = [
            "",
            "   ",
            "one",
            "two  words",
            "  lead and\ttrail \n ",
            "exactly ten",
            "élan vital — über straße",
            "a b c d e f g h i j k l m n o p",
            "averyveryverylongwordwithoutspaces and more",
        ];
        for t in texts {
            for n in 0..16 {
                assert_eq!(one_line(t, n), naive(t, n), "{t:?} at {n}");
            }
        }
    }

    #[test]
    fn markup_in_data_is_shown_as_text() {
        let hostile = r#"<script>alert("x")</script> & 'q' {{ 7*7 }} {% for %}"#;
        let t = text(hostile);
        assert_eq!(
            t,
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;q&#39; {{ 7*7 }} {% for %}"
        );
        assert!(!attr(hostile).contains(['<', '>', '"', '\'']));
    }

    #[test]
    fn emoji_and_non_latin_text_pass_unchanged() {
        let s = "🦀🎉 ünïcödé — 中文 עברית مرحبا";
        assert_eq!(text(s), s);
    }

    #[test]
    fn bidi_overrides_and_controls_become_visible_markers() {
        let t = text("abc\u{202E}fed\u{2066}x\u{0000}y\u{001B}z\nnext\ttab");
        assert!(!t.contains('\u{202E}') && !t.contains('\u{2066}') && !t.contains('\0'));
        assert!(t.contains(">U+202E</span>"), "{t}");
        assert!(t.contains(">U+2066</span>"), "{t}");
        assert!(t.contains(">␀</span>") && t.contains(">␛</span>"), "{t}");
        assert!(t.contains("\nnext\ttab"));
        let a = attr("a\u{202E}b\u{0001}");
        assert_eq!(a, "aU+202Eb␁");
    }

    #[test]
    fn json_cannot_close_the_script_element() {
        let v =
            serde_json::json!({"p": "</script><script>alert(1)</script> & \u{2028}\u{2029} <!--"});
        let s = json_for_script(&v).unwrap();
        assert!(!s.contains('<') && !s.contains('>') && !s.contains('&'));
        assert!(!s.contains('\u{2028}') && !s.contains('\u{2029}'));
        let back: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn csp_hashes_are_padded_standard_base64_of_sha256() {
        // The well-known SHA-256 of the empty string, as CSP spells it.
        assert_eq!(
            csp_hash(""),
            "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='"
        );
        assert_eq!(
            csp_hash("abc"),
            "'sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0='"
        );
    }
}
