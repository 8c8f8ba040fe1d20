//! HTML building blocks of the console: escaping, the page layout, tables, the lineage picture,
//! sparklines and a line diff. Everything dynamic goes through [`esc`].

use std::fmt::Write;

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
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

/// Percent-encodes one query value or path part (ids hold slashes: those stay for paths).
pub fn url_part(s: &str, keep_slash: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b'/' if keep_slash => out.push('/'),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// A JSON value as text: strings bare, the rest as JSON.
pub fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "–".into(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub const NAV: [(&str, &str); 5] = [
    ("/ui/runs", "Runs"),
    ("/ui/definitions", "Definitions"),
    ("/ui/tasks", "Human tasks"),
    ("/ui/dead-letters", "Dead letters"),
    ("/ui/lag", "Lag"),
];

/// A whole page: `current` is the nav entry to mark, `who` the signed-in token's name.
pub fn page(title: &str, current: &str, who: Option<&str>, body: &str) -> String {
    let mut nav = String::new();
    if let Some(who) = who {
        nav.push_str(r#"<nav aria-label="Sections"><ul>"#);
        for (href, label) in NAV {
            let here = if href == current { r#" aria-current="page""# } else { "" };
            let _ = write!(nav, r#"<li><a href="{href}"{here}>{label}</a></li>"#);
        }
        let _ = write!(
            nav,
            r#"</ul><form method="post" action="/ui/logout" class="logout"><span>{}</span> <button type="submit">Sign out</button></form></nav>"#,
            esc(who)
        );
    }
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · task factory</title><link rel="stylesheet" href="/ui/assets/style.css"><script src="/ui/assets/app.js" defer></script></head>
<body><header><a class="brand" href="/ui/runs">task factory</a>{nav}</header>
<main id="main"><h1>{title}</h1>
{body}
</main></body></html>"#,
        title = esc(title)
    )
}

/// A table: headers, then rows of already-escaped cells.
pub fn table(caption: &str, headers: &[&str], rows: &[Vec<String>], empty: &str) -> String {
    if rows.is_empty() {
        return format!(r#"<p class="empty">{}</p>"#, esc(empty));
    }
    let mut out = format!(r#"<div class="scroll"><table><caption>{}</caption><thead><tr>"#, esc(caption));
    for h in headers {
        let _ = write!(out, r#"<th scope="col">{}</th>"#, esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for r in rows {
        out.push_str("<tr>");
        for c in r {
            let _ = write!(out, "<td>{c}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
    out
}

pub fn status(s: &str) -> String {
    format!(r#"<span class="status status-{}">{}</span>"#, esc(&s.to_ascii_lowercase()), esc(s))
}

/// The flash message after an action, as a live region.
pub fn flash(message: Option<&str>, error: bool) -> String {
    match message {
        Some(m) if !m.is_empty() => {
            format!(r#"<p role="status" aria-live="polite" class="flash{}">{}</p>"#, if error { " flash-error" } else { "" }, esc(m))
        }
        _ => String::new(),
    }
}

/// A sparkline of `points` (oldest first) as inline SVG with a text alternative.
pub fn sparkline(label: &str, points: &[f64], unit: &str) -> String {
    let (w, h) = (320.0, 48.0);
    let max = points.iter().copied().fold(0.0_f64, f64::max).max(1.0);
    let n = points.len().max(2) as f64 - 1.0;
    let path: Vec<String> =
        points.iter().enumerate().map(|(i, p)| format!("{:.1},{:.1}", i as f64 / n * w, h - 2.0 - p / max * (h - 4.0))).collect();
    let last = points.last().copied().unwrap_or(0.0);
    format!(
        r#"<figure class="spark"><svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{label}: now {last:.1} {unit}, at most {max:.1} over the window"><polyline fill="none" stroke="currentColor" stroke-width="2" points="{}"/></svg><figcaption>{label}: <strong>{last:.1}</strong> {unit} (max {max:.1})</figcaption></figure>"#,
        path.join(" "),
        label = esc(label),
        unit = esc(unit),
    )
}

/// One box of the lineage picture.
pub fn lineage_step(kind: &str, title: &str, lines: &[String]) -> String {
    let mut out = format!(r#"<li class="step step-{}"><span class="kind">{}</span><strong>{title}</strong>"#, esc(kind), esc(kind));
    for l in lines {
        let _ = write!(out, "<span>{l}</span>");
    }
    out.push_str("</li>");
    out
}

/// Line diff of two texts (longest common subsequence), as a `<pre>` with `+`/`-` lines.
pub fn diff(old: &str, new: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::from(r#"<pre class="diff">"#));
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            let _ = writeln!(out, "  {}", esc(a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            // Removals before additions, as unified diffs print them.
            let _ = writeln!(out, r#"<del>- {}</del>"#, esc(a[i]));
            i += 1;
        } else {
            let _ = writeln!(out, r#"<ins>+ {}</ins>"#, esc(b[j]));
            j += 1;
        }
    }
    out.push_str("</pre>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_urls() {
        assert_eq!(esc(r#"<a href="x">&'"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(url_part("run/a b/1", true), "run/a%20b/1");
        assert_eq!(url_part("k&y=1", false), "k%26y%3D1");
    }

    #[test]
    fn diff_marks_changed_lines() {
        let d = diff("a\nb\nc\n", "a\nx\nc\n");
        assert!(d.contains("<del>- b</del>\n<ins>+ x</ins>") && d.contains("  a\n") && d.contains("  c\n"), "{d}");
        assert!(!diff("same\n", "same\n").contains("<ins>"));
    }

    #[test]
    fn sparkline_scales_and_describes() {
        let s = sparkline("lag", &[0.0, 5.0, 10.0], "records");
        assert!(s.contains("now 10.0 records") && s.contains("<polyline"), "{s}");
    }
}
