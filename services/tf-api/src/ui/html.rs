//! HTML building blocks of the console, as maud templates: the page layout, tables, statuses,
//! flash messages, the lineage picture, sparklines and a line diff. maud escapes every value
//! spliced into a template; nothing here builds markup from strings.

use std::fmt::Write;

use maud::{DOCTYPE, Markup, html};

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

/// A JSON value pretty-printed, for `<pre>` blocks.
pub fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

pub const NAV: [(&str, &str); 6] = [
    ("/ui/runs", "Runs"),
    ("/ui/definitions", "Definitions"),
    ("/ui/tasks", "Human tasks"),
    ("/ui/dead-letters", "Dead letters"),
    ("/ui/limits", "Limits"),
    ("/ui/lag", "Lag"),
];

/// A whole page: `current` is the nav entry to mark, `who` the signed-in token's name.
pub fn page(title: &str, current: &str, who: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · task factory" }
                link rel="stylesheet" href="/ui/assets/style.css";
                script src="/ui/assets/app.js" defer {}
            }
            body {
                header {
                    a.brand href="/ui/runs" { "task factory" }
                    @if let Some(who) = who {
                        nav aria-label="Sections" {
                            ul {
                                @for (href, label) in NAV {
                                    li { a href=(href) aria-current=[(href == current).then_some("page")] { (label) } }
                                }
                            }
                            form.logout method="post" action="/ui/logout" {
                                span { (who) } " "
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main #main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A table: a caption, column headers and rows of cells.
pub fn table(caption: &str, headers: &[&str], rows: &[Vec<Markup>], empty: &str) -> Markup {
    html! {
        @if rows.is_empty() {
            p.empty { (empty) }
        } @else {
            div.scroll {
                table {
                    caption { (caption) }
                    thead { tr { @for h in headers { th scope="col" { (h) } } } }
                    tbody { @for r in rows { tr { @for c in r { td { (c) } } } } }
                }
            }
        }
    }
}

/// A stored RFC 3339 time as people read it in a table: `2026-12-07 21:04:24` (UTC), the full
/// value in the element's `datetime`.
pub fn when(t: &str) -> Markup {
    let short = chrono::DateTime::parse_from_rfc3339(t)
        .map(|d| d.with_timezone(&chrono::Utc).format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|_| t.to_string());
    html! { time datetime=(t) { (short) } }
}

pub fn status(s: &str) -> Markup {
    html! { span class={ "status status-" (s.to_ascii_lowercase()) } { (s) } }
}

/// The flash message after an action, as a live region.
pub fn flash(message: Option<&str>, error: bool) -> Markup {
    html! {
        @if let Some(m) = message.filter(|m| !m.is_empty()) {
            p role="status" aria-live="polite" class={ "flash" @if error { " flash-error" } } { (m) }
        }
    }
}

/// An error the page shows in place of (or above) its content.
pub fn alert(message: &str) -> Markup {
    html! { p role="alert" class="flash flash-error" { (message) } }
}

/// A sparkline of `points` (oldest first) as inline SVG with a text alternative.
pub fn sparkline(label: &str, points: &[f64], unit: &str) -> Markup {
    let (w, h) = (320.0, 48.0);
    let max = points.iter().copied().fold(0.0_f64, f64::max).max(1.0);
    let n = points.len().max(2) as f64 - 1.0;
    let path: Vec<String> =
        points.iter().enumerate().map(|(i, p)| format!("{:.1},{:.1}", i as f64 / n * w, h - 2.0 - p / max * (h - 4.0))).collect();
    let last = points.last().copied().unwrap_or(0.0);
    html! {
        figure.spark {
            svg viewBox={ "0 0 " (w) " " (h) } width=(w) height=(h) role="img"
                aria-label={ (label) ": now " (format!("{last:.1}")) " " (unit) ", at most " (format!("{max:.1}")) " over the window" } {
                polyline fill="none" stroke="currentColor" stroke-width="2" points=(path.join(" ")) {}
            }
            figcaption { (label) ": " strong { (format!("{last:.1}")) } " " (unit) " (max " (format!("{max:.1}")) ")" }
        }
    }
}

/// One box of the lineage picture.
pub fn lineage_step(kind: &str, title: &str, lines: &[Markup]) -> Markup {
    html! {
        li class={ "step step-" (kind) } {
            span.kind { (kind) }
            strong { (title) }
            @for l in lines { span { (l) } }
        }
    }
}

/// Line diff of two texts (longest common subsequence), as a `<pre>` with `+`/`-` lines.
pub fn diff(old: &str, new: &str) -> Markup {
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    enum Line<'a> {
        Same(&'a str),
        Removed(&'a str),
        Added(&'a str),
    }
    let (mut i, mut j, mut lines) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            lines.push(Line::Same(a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            // Removals before additions, as unified diffs print them.
            lines.push(Line::Removed(a[i]));
            i += 1;
        } else {
            lines.push(Line::Added(b[j]));
            j += 1;
        }
    }
    html! {
        pre.diff {
            @for l in &lines {
                @match l {
                    Line::Same(t) => { "  " (t) "\n" }
                    Line::Removed(t) => { del { "- " (t) } "\n" }
                    Line::Added(t) => { ins { "+ " (t) } "\n" }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_and_urls_encoded() {
        let t = table("c", &["h"], &[vec![html! { (r#"<a href="x">&'"#) }]], "none").into_string();
        assert!(t.contains("<td>&lt;a href=&quot;x&quot;&gt;&amp;'</td>"), "{t}");
        assert_eq!(url_part("run/a b/1", true), "run/a%20b/1");
        assert_eq!(url_part("k&y=1", false), "k%26y%3D1");
        let p = page("<t>", "/ui/runs", Some("<who>"), html! {}).into_string();
        assert!(p.contains("<title>&lt;t&gt; · task factory</title>") && p.contains("<span>&lt;who&gt;</span>"), "{p}");
        assert!(p.contains(r#"<a href="/ui/runs" aria-current="page">Runs</a>"#) && p.contains(r#"<a href="/ui/lag">Lag</a>"#), "{p}");
    }

    #[test]
    fn diff_marks_changed_lines() {
        let d = diff("a\nb\nc\n", "a\nx\nc\n").into_string();
        assert!(d.contains("<del>- b</del>\n<ins>+ x</ins>") && d.contains("  a\n") && d.contains("  c\n"), "{d}");
        assert!(!diff("same\n", "same\n").into_string().contains("<ins>"));
        assert!(diff("<b>\n", "").into_string().contains("<del>- &lt;b&gt;</del>"));
    }

    #[test]
    fn sparkline_scales_and_describes() {
        let s = sparkline("lag", &[0.0, 5.0, 10.0], "records").into_string();
        assert!(s.contains("now 10.0 records") && s.contains("<polyline"), "{s}");
    }
}
