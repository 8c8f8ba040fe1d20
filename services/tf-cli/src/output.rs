//! What every command answers, printed for people (`-o table`, the default) or for scripts
//! (`-o json`, `-o yaml`). A command builds one [`Answer`]: the object scripts read, which is
//! the API's own object where the API serves the command, so both modes print the same JSON, and
//! the text people read. Progress of long commands goes to stderr, never into the answer.

use std::process::ExitCode;

use serde::Serialize;
use serde_json::Value;

/// How commands print.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Format {
    /// Text for people; lists as aligned columns.
    Table,
    /// The answer's object as JSON.
    Json,
    /// The answer's object as YAML.
    Yaml,
}

/// One command's answer.
#[derive(Debug)]
pub struct Answer {
    value: Value,
    text: String,
    code: ExitCode,
}

impl Answer {
    /// An answer whose object is `value`; its text is set with [`Answer::text`].
    pub fn new(value: impl Serialize) -> anyhow::Result<Answer> {
        Ok(Answer { value: serde_json::to_value(value)?, text: String::new(), code: ExitCode::SUCCESS })
    }

    pub fn text(self, text: impl Into<String>) -> Answer {
        Answer { text: text.into(), ..self }
    }

    pub fn code(self, code: ExitCode) -> Answer {
        Answer { code, ..self }
    }

    /// Prints the answer in `format` and gives the exit code.
    pub fn print(&self, format: Format) -> anyhow::Result<ExitCode> {
        match format {
            Format::Table => print!("{}", self.text),
            Format::Json => println!("{}", serde_json::to_string_pretty(&self.value)?),
            Format::Yaml => print!("{}", yaml_serde::to_string(&self.value)?),
        }
        Ok(self.code)
    }
}

/// The exit code of a command that reports a partial failure in its answer.
pub fn failure_if(failed: bool) -> ExitCode {
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// Appends one line to a command's text.
macro_rules! say {
    ($text:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        writeln!($text, $($arg)*).expect("writing to a String");
    }};
}
pub(crate) use say;

/// `rows` under `headers` as aligned columns, or `empty` when there are none.
pub fn table(headers: &[&str], rows: &[Vec<String>], empty: &str) -> String {
    if rows.is_empty() {
        return format!("{empty}\n");
    }
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::NOTHING).set_content_arrangement(comfy_table::ContentArrangement::Disabled);
    t.set_header(headers.to_vec());
    for r in rows {
        t.add_row(r.clone());
    }
    // The preset pads every cell with one space on each side; a line starts at its first column.
    let lines: Vec<String> = t.lines().map(|l| l.strip_prefix(' ').unwrap_or(&l).trim_end().to_string()).collect();
    format!("{}\n", lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_aligns_its_columns_under_their_headers() {
        let t = table(&["ID", "STATE"], &[vec!["a-long-id".into(), "enabled".into()], vec!["b".into(), "retired".into()]], "none");
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        let col = lines[0].find("STATE").unwrap();
        assert_eq!(lines[1].find("enabled"), Some(col), "{t}");
        assert_eq!(lines[2].find("retired"), Some(col), "{t}");
        assert!(lines[0].starts_with("ID"), "{t}");
        assert_eq!(table(&["ID"], &[], "(none)"), "(none)\n");
    }

    #[test]
    fn json_and_yaml_print_the_same_object() {
        let a = Answer::new(serde_json::json!({"id": "x", "n": 2})).unwrap();
        let yaml: Value = yaml_serde::from_str(&yaml_serde::to_string(&a.value).unwrap()).unwrap();
        assert_eq!(yaml, a.value);
    }
}
