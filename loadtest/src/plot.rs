//! Line charts as standalone SVG, so a load test's figures can be looked at without a plotting
//! tool: one panel per chart, its series drawn against a shared time axis.

/// One line: its legend, colour and points (x = seconds, y = the value).
pub struct Series {
    pub label: String,
    pub color: &'static str,
    pub points: Vec<(f64, f64)>,
}

/// A panel: its title, the y axis' unit, and its lines.
pub struct Panel {
    pub title: String,
    pub unit: &'static str,
    pub series: Vec<Series>,
}

const WIDTH: f64 = 760.0;
const PANEL_HEIGHT: f64 = 260.0;
const MARGIN: f64 = 56.0;

/// The panels stacked vertically, sharing the x axis (seconds from the first send).
pub fn svg(panels: &[Panel]) -> String {
    let t_max = panels.iter().flat_map(|p| p.series.iter()).flat_map(|s| s.points.iter().map(|(t, _)| *t)).fold(1.0_f64, f64::max);
    let height = PANEL_HEIGHT * panels.len() as f64;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
"#
    );
    for (i, panel) in panels.iter().enumerate() {
        out.push_str(&panel_svg(panel, PANEL_HEIGHT * i as f64, t_max));
    }
    out.push_str("</svg>\n");
    out
}

fn panel_svg(panel: &Panel, top: f64, t_max: f64) -> String {
    let y_max = panel.series.iter().flat_map(|s| s.points.iter().map(|(_, v)| *v)).fold(0.0_f64, f64::max).max(1.0);
    let (left, right) = (MARGIN, WIDTH - MARGIN / 2.0);
    let (upper, bottom) = (top + 36.0, top + PANEL_HEIGHT - 30.0);
    let x = |t: f64| left + (right - left) * t / t_max;
    let y = |v: f64| bottom - (bottom - upper) * v / y_max;
    let mut out = format!(
        r#"<text x="{left}" y="{title_y}" font-weight="bold">{title}</text>
<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="black"/><line x1="{left}" y1="{upper}" x2="{left}" y2="{bottom}" stroke="black"/>
<text x="{left}" y="{tick_y}">0 s</text><text x="{right}" y="{tick_y}" text-anchor="end">{t_max:.0} s</text>
<text x="{label_x}" y="{upper}" text-anchor="end">{y_max:.0}</text><text x="{label_x}" y="{bottom}" text-anchor="end">0</text>
<text x="{label_x}" y="{unit_y}" text-anchor="end">{unit}</text>
"#,
        title = escape(&panel.title),
        title_y = top + 18.0,
        tick_y = bottom + 16.0,
        label_x = left - 6.0,
        unit_y = (upper + bottom) / 2.0,
        unit = escape(panel.unit),
    );
    let mut legend_x = left + 10.0;
    for s in &panel.series {
        let points: Vec<String> = s.points.iter().map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v))).collect();
        out.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{p}\"/>\n<text x=\"{legend_x:.0}\" y=\"{ly}\" fill=\"{c}\">{l}</text>\n",
            c = s.color,
            p = points.join(" "),
            ly = upper + 4.0,
            l = escape(&s.label),
        ));
        legend_x += 12.0 + 7.0 * s.label.chars().count() as f64;
    }
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_each_series_scaled_into_its_panel() {
        let panel = |title: &str, values: [f64; 3]| Panel {
            title: title.into(),
            unit: "ms",
            series: vec![Series {
                label: "p99 <x>".into(),
                color: "#d62728",
                points: vec![(0.0, values[0]), (5.0, values[1]), (10.0, values[2])],
            }],
        };
        let svg = svg(&[panel("a", [0.0, 50.0, 100.0]), panel("b", [1.0, 2.0, 4.0])]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("p99 &lt;x&gt;"), "labels are escaped");
        // The first panel's last point sits at the right edge and the top of its plot area.
        assert!(svg.contains(&format!("{:.1},{:.1}", WIDTH - MARGIN / 2.0, 36.0)), "{svg}");
        assert!(svg.contains(r#"height="520""#));
    }
}
