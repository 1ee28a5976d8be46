//! `engine demo`: the README's first command works from an empty directory, with
//! no account and no network, and shows the seed's three contacts Complete in
//! both CRMs.

use crate::support::{replacing, run_engine};

/// The demo's output with its CRM ids replaced and the sandbox listings
/// (ordered by CRM id, which follows the order requests arrived in) sorted.
/// This happens here rather than in insta filters, which run after it: the
/// order is only stable once the ids are gone.
fn normalise(stdout: &str) -> String {
    let mut text = stdout.to_string();
    let filters = [
        (r"\b17655934\d{4}\b", "[HUBSPOT_ID]"),
        (r"(brevo +Complete +)\d+ *", "${1}[BREVO_ID]    "),
        (r"(?m)^  \d+ +(hubspot-scheduler)", "  [BREVO_ID] ${1}"),
    ];
    for (pattern, replacement) in filters {
        text = regex::Regex::new(pattern)
            .unwrap()
            .replace_all(&text, replacement)
            .into_owned();
    }
    let mut out: Vec<String> = Vec::new();
    let mut listing: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.starts_with("  ") {
            listing.push(line.to_string());
            continue;
        }
        listing.sort();
        out.append(&mut listing);
        out.push(line.to_string());
    }
    listing.sort();
    out.append(&mut listing);
    out.join("\n") + "\n"
}

#[test]
fn engine_demo_shows_the_three_seed_contacts_complete_in_both_crms() {
    let dir = tempfile::tempdir().unwrap();
    let today = || chrono::Utc::now().date_naive().to_string();
    let before = today();
    // The demo keeps its database in the temp dir: this test's, so it goes away.
    let tmp = dir.path().display().to_string();
    let transcript = run_engine(dir.path(), &["demo"], &[("TMPDIR", &tmp)]);
    let dates = [before, today()];
    let (head, stderr) = transcript
        .split_once("----- stderr -----\n")
        .expect("a transcript");
    assert!(head.starts_with("exit code: 0\n"), "{transcript}");
    assert!(
        !stderr.contains("ERROR") && !stderr.contains("WARN"),
        "{stderr}"
    );
    let stdout = head.split_once("----- stdout -----\n").expect("stdout").1;
    assert_eq!(stdout.matches(" Complete ").count(), 6, "{stdout}");
    let mut settings = replacing(&[(&dates[0], "[TODAY]"), (&dates[1], "[TODAY]")]);
    settings.add_filter(r"engine-demo-\d+", "engine-demo-[PID]");
    settings.add_filter(r"http://127\.0\.0\.1:\d+", "[SANDBOX]");
    settings.bind(|| assert_snapshot!("demo_stdout", normalise(stdout)));
}
