//! `docs/add-a-crm.md` followed literally: the files it tells you to write pass
//! `engine check` with the output it shows, sync against the sandbox, and each of
//! the five mistakes gets the `check` error the guide prints.

use std::collections::BTreeMap;

use engine::sandbox::SandboxOptions;
use engine::store::Backend;
use serde_json::json;

use crate::support::{ConfigDir, Harness, SandboxHarness, run_engine};

const GUIDE: &str = include_str!("../../docs/add-a-crm.md");

/// One fenced block: its info string (`toml file=…`) and its text.
struct Block {
    info: String,
    text: String,
}

fn blocks() -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for line in GUIDE.lines() {
        match (line.strip_prefix("```"), open.take()) {
            (Some(info), None) => {
                open = Some(Block {
                    info: info.trim().to_string(),
                    text: String::new(),
                });
            }
            (Some(_), Some(block)) => out.push(block),
            (None, Some(mut block)) => {
                block.text.push_str(line);
                block.text.push('\n');
                open = Some(block);
            }
            (None, None) => {}
        }
    }
    out
}

/// The value of `key=` in a block's info string.
fn attr<'a>(block: &'a Block, key: &str) -> Option<&'a str> {
    block
        .info
        .split_whitespace()
        .find_map(|word| word.strip_prefix(&format!("{key}=")))
}

/// The files the guide tells you to write, by path.
fn files() -> Vec<(String, String)> {
    blocks()
        .iter()
        .filter(|b| b.info.starts_with("toml"))
        .filter_map(|b| Some((attr(b, "file")?.to_string(), b.text.clone())))
        .collect()
}

fn written() -> ConfigDir {
    let config = ConfigDir {
        dir: tempfile::tempdir().unwrap(),
    };
    let files = files();
    assert_eq!(files.len(), 2, "a connector and a mapping");
    for (path, text) in &files {
        config.write(path, text);
    }
    config
}

const ENV: &[(&str, &str)] = &[("MYBREVO_API_KEY", "anything")];

/// `(stdout, stderr)` of a transcript from `run_engine`.
fn split(transcript: &str) -> (&str, &str) {
    let (head, stderr) = transcript
        .split_once("----- stderr -----\n")
        .expect("a transcript");
    let stdout = head.split_once("----- stdout -----\n").unwrap().1;
    (stdout, stderr)
}

#[test]
fn the_files_the_guide_writes_pass_check_with_the_output_it_shows() {
    let config = written();
    let transcript = run_engine(config.path(), &["check"], ENV);
    assert!(transcript.starts_with("exit code: 0"), "{transcript}");
    let shown = blocks()
        .into_iter()
        .find(|b| b.info == "text output=check")
        .expect("the guide shows check's output");
    assert_eq!(split(&transcript).0, shown.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_connector_syncs_against_the_sandbox_creating_then_updating() {
    // The guide's own database is private to this test: its table keeps its name.
    let h = SandboxHarness::around(SandboxOptions::default(), |base_url| {
        let env = BTreeMap::from([
            ("MYBREVO_API_KEY".into(), "anything".into()),
            ("MYBREVO_BASE_URL".into(), format!("{base_url}/v3")),
        ]);
        Harness::start(Backend::Sqlite, written(), env, &["mybrevo"], |_, _| {})
    })
    .await
    .expect("SQLite is always there");
    let contact =
        |id: &str, name: &str| json!({"id": id, "email": "ada@example.com", "name": name});
    h.harness.queue([contact("c1", "Ada Lovelace")]).await;
    h.run_now().await;
    // The same email again: an update (204), its id looked up.
    h.harness.queue([contact("c2", "Ada King")]).await;
    h.run_now().await;
    let (c1, c2) = (h.row("c1").await, h.row("c2").await);
    for row in [&c1, &c2] {
        assert_eq!(row["mybrevo_processing_status"], "Complete", "{row:?}");
    }
    assert!(c1["mybrevo_contact_id"].is_string(), "{c1:?}");
    assert_eq!(c1["mybrevo_contact_id"], c2["mybrevo_contact_id"]);
    let contacts = h.sandbox.brevo_contacts();
    assert_eq!(contacts.len(), 1, "{contacts:?}");
    assert_eq!(contacts[0]["attributes"]["LASTNAME"], "King");
}

/// One of the guide's mistakes: its heading, the change, and the error shown.
struct Mistake {
    heading: String,
    file: String,
    from: String,
    to: String,
    shown: String,
}

/// The mistakes, in the guide's order: each `diff` block, then its `text mistake` block.
fn mistakes() -> Vec<Mistake> {
    let mut out = Vec::new();
    let mut heading = String::new();
    let mut change: Option<(String, String, String)> = None;
    let all = blocks();
    let mut diffs = all.iter().filter(|b| b.info.starts_with("diff"));
    let mut shown = all.iter().filter(|b| b.info == "text mistake");
    let side = |block: &Block, sign: char| -> String {
        let lines: Vec<&str> = block
            .text
            .lines()
            .filter_map(|l| l.strip_prefix(sign))
            .collect();
        lines.join("\n")
    };
    for line in GUIDE.lines() {
        if let Some(title) = line.strip_prefix("### ") {
            heading = title.to_string();
        }
        if line.starts_with("```diff") {
            let block = diffs.next().unwrap();
            let file = attr(block, "file").unwrap().to_string();
            change = Some((file, side(block, '-'), side(block, '+')));
        }
        if line.starts_with("```text mistake") {
            let (file, from, to) = change.take().expect("a change before its error");
            out.push(Mistake {
                heading: heading.clone(),
                file,
                from,
                to,
                shown: shown.next().unwrap().text.clone(),
            });
        }
    }
    out
}

/// The guide's path (for `UPDATE_GUIDE=1`).
fn guide_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/add-a-crm.md")
}

/// Regenerate the errors the guide shows with `UPDATE_GUIDE=1 cargo test --test it guide`.
#[test]
fn each_of_the_five_mistakes_gets_the_check_error_the_guide_shows() {
    let mistakes = mistakes();
    assert_eq!(mistakes.len(), 5);
    let mut guide = GUIDE.to_string();
    let mut stale = Vec::new();
    for Mistake {
        heading,
        file,
        from,
        to,
        shown,
    } in mistakes
    {
        let config = written();
        config.edit(&file, &from, &to);
        let transcript = run_engine(config.path(), &["check"], ENV);
        assert!(
            transcript.starts_with("exit code: 2"),
            "{heading}: {transcript}"
        );
        let stderr = split(&transcript).1;
        let name = heading.to_lowercase().replace([' ', '-'], "_");
        insta::assert_snapshot!(format!("mistake_{name}"), stderr);
        if stderr != shown {
            stale.push(heading);
            guide = guide.replacen(
                &format!("```text mistake\n{shown}```"),
                &format!("```text mistake\n{stderr}```"),
                1,
            );
        }
    }
    if std::env::var_os("UPDATE_GUIDE").is_some() {
        std::fs::write(guide_path(), guide).unwrap();
        return;
    }
    assert!(
        stale.is_empty(),
        "the guide shows other errors for {stale:?}: run UPDATE_GUIDE=1 cargo test --test it guide"
    );
}
