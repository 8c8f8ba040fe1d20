//! `tf-loadtest compare` on the real stack, at a size CI affords: a bare baseline, a router of
//! its own started for each run, and the ratio, with nothing left behind. (The figures of
//! loadtest/README.md come from the same command at 6,000 events with release builds.)

use std::process::Command;

#[test]
fn compare_alternates_baseline_and_router_and_prints_the_ratio() {
    let out = std::env::temp_dir().join(format!("tf-compare-{}", std::process::id()));
    let run = Command::new(env!("CARGO_BIN_EXE_tf-loadtest"))
        .args(["compare", "--baseline", "bare", "--events", "50", "--duplicates", "0.2", "--rest-secs", "0"])
        .arg("--out")
        .arg(&out)
        .output()
        .expect("running tf-loadtest compare");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    let runs: Vec<(&str, f64)> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("run "))
        .map(|l| {
            let mut words = l.split_whitespace().skip(1);
            let side = words.next().unwrap_or_default();
            (side, words.next().and_then(|x| x.parse().ok()).unwrap_or(0.0))
        })
        .collect();
    let sides: Vec<&str> = runs.iter().map(|r| r.0).collect();
    assert_eq!(sides, ["bare", "router", "router", "bare"], "{stdout}");
    assert!(runs.iter().all(|r| r.1 > 0.0), "every run has its figure: {stdout}");
    let ratio: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("router / bare"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|x| x.parse().ok())
        .unwrap_or_else(|| panic!("no ratio line: {stdout}"));
    let (router, bare) = ((runs[1].1 + runs[2].1) / 2.0, (runs[0].1 + runs[3].1) / 2.0);
    assert!((ratio - router / bare).abs() < 0.01 + 0.02 * ratio, "ratio {ratio} is the means' ({router} / {bare}): {stdout}");
    // Each router run read its own burst from a topic of its own, and removed it after.
    let reports =
        std::fs::read_dir(&out).unwrap().filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().ends_with("-router.txt"));
    let mut n = 0;
    for r in reports {
        let text = std::fs::read_to_string(r.path()).unwrap();
        assert!(text.contains("events produced        50  (40 unique keys, 20% duplicates)"), "{text}");
        assert!(text.contains("removed topic compare.loadtest-"), "{text}");
        n += 1;
    }
    assert_eq!(n, 2, "two router runs' reports in {}", out.display());
}
