//! Escaping text for the HTML reports and their SVG charts (both put user and model text into
//! markup, and neither may ever run it).

/// Escapes text for HTML (every piece of dialogue text goes through this: transcripts are
/// written by models and by people, and either may contain markup).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
