//! `tf dead-letters list|redrive`: the DLQ through tf-api, which holds the browser and the
//! once-per-offset redrive (its bookkeeping and the check that a dead letter's headers cannot
//! choose where a redrive writes). Without `--api-url` these commands say so.

use serde_json::{Value as Json, json};

use crate::output::{Answer, say, table};

pub fn needs_api() -> anyhow::Result<Answer> {
    anyhow::bail!(
        "dead-letters goes through tf-api, which browses the DLQ and redrives each dead letter once: pass --api-url (or TF_API_URL) and a token with the read (list) or write (redrive) scope"
    )
}

/// A page of dead letters.
pub fn listed(page: Json) -> anyhow::Result<Answer> {
    let text_of = |v: &Json| v.as_str().map_or_else(|| if v.is_null() { "-".to_string() } else { v.to_string() }, str::to_string);
    let rows: Vec<Vec<String>> = page["dead_letters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let src = &d["source"];
            vec![
                format!("{}:{}", d["partition"], d["offset"]),
                text_of(&d["stage"]),
                format!("{}[{}]@{}", text_of(&src["topic"]), text_of(&src["partition"]), text_of(&src["offset"])),
                if d["redrive"].is_null() { "-".into() } else { "redriven".into() },
                text_of(&d["reason"]).chars().take(100).collect(),
            ]
        })
        .collect();
    let mut text = table(&["AT", "STAGE", "SOURCE", "REDRIVE", "REASON"], &rows, "(no dead letters match)");
    if let Some(next) = page["next_cursor"].as_str() {
        say!(text, "more: --cursor {next}");
    }
    Ok(Answer::new(page)?.text(text))
}

/// The body of a redrive: `PARTITION:OFFSET` records, or a filter.
pub fn redrive_request(records: &[String], topic: Option<&str>, stage: Option<&str>, limit: Option<usize>) -> anyhow::Result<Json> {
    let mut coordinates = Vec::new();
    for r in records {
        let parsed = r.split_once(':').and_then(|(p, o)| Some((p.parse::<i32>().ok()?, o.parse::<i64>().ok()?)));
        let (partition, offset) =
            parsed.ok_or_else(|| anyhow::anyhow!("{r:?} is not PARTITION:OFFSET (as `tf dead-letters list` shows AT)"))?;
        coordinates.push(json!({"partition": partition, "offset": offset}));
    }
    anyhow::ensure!(
        !coordinates.is_empty() || topic.is_some() || stage.is_some(),
        "name dead letters (PARTITION:OFFSET) or --topic/--stage"
    );
    let mut body = json!({ "records": coordinates });
    for (k, v) in [("topic", topic), ("stage", stage)] {
        if let Some(v) = v {
            body[k] = json!(v);
        }
    }
    if let Some(n) = limit {
        body["limit"] = json!(n);
    }
    Ok(body)
}

/// A redrive's answer.
pub fn redriven(result: Json) -> anyhow::Result<Answer> {
    let mut text = String::new();
    for r in result["redriven"].as_array().into_iter().flatten() {
        say!(
            text,
            "redriven {}:{} to {}[{}]@{}",
            r["dead_letter"]["partition"],
            r["dead_letter"]["offset"],
            r["topic"].as_str().unwrap_or("?"),
            r["partition"],
            r["offset"]
        );
    }
    let skipped = result["skipped"].as_array().map_or(0, Vec::len);
    for s in result["skipped"].as_array().into_iter().flatten() {
        say!(text, "skipped  {}:{}: {}", s["dead_letter"]["partition"], s["dead_letter"]["offset"], s["reason"].as_str().unwrap_or("?"));
    }
    Ok(Answer::new(result)?.text(text).code(crate::output::failure_if(skipped > 0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redrive_names_records_as_partition_and_offset() {
        let body = redrive_request(&["0:12".into(), "3:4".into()], None, None, None).unwrap();
        assert_eq!(body["records"], json!([{"partition": 0, "offset": 12}, {"partition": 3, "offset": 4}]));
        assert!(redrive_request(&["0-12".into()], None, None, None).is_err());
        assert!(redrive_request(&[], None, None, None).is_err(), "a redrive of nothing is refused");
        assert_eq!(redrive_request(&[], Some("events.demo"), None, Some(5)).unwrap()["limit"], 5);
    }
}
