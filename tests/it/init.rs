//! `engine init` and `engine schema`: starting from an empty directory.

use crate::support::run_engine;

#[test]
fn init_into_an_empty_directory_then_check_passes_there() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("sync");
    let init = run_engine(dir.path(), &["init", "sync"], &[]);
    assert!(init.starts_with("exit code: 0"), "{init}");
    assert!(
        init.contains("connectors/hubspot.toml") && init.contains(".env.example"),
        "{init}"
    );
    let check = run_engine(&target, &["check"], &[]);
    assert!(check.starts_with("exit code: 0"), "{check}");
    assert!(check.contains("ok: 9 connectors, 2 mappings"), "{check}");
    // The #:schema lines point at files that are there.
    assert!(target.join("schemas/connector.schema.json").exists());
    let env_example = std::fs::read_to_string(target.join(".env.example")).unwrap();
    for name in [
        "DATABASE_URL=",
        "HUBSPOT_ACCESS_TOKEN=",
        "BREVO_API_KEY=",
        "# BREVO_BASE_URL=https://api.brevo.com/v3",
    ] {
        assert!(env_example.contains(name), "{env_example}");
    }
    // No database was created by init or check.
    assert!(!target.join("engine.db").exists());
}

#[test]
fn init_keeps_files_that_exist_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("mappings")).unwrap();
    std::fs::write(dir.path().join("mappings/hubspot.toml"), "# mine\n").unwrap();
    let init = run_engine(dir.path(), &["init"], &[]);
    assert!(init.contains("kept 1 files"), "{init}");
    let mine = std::fs::read_to_string(dir.path().join("mappings/hubspot.toml")).unwrap();
    assert_eq!(mine, "# mine\n");
    let forced = run_engine(dir.path(), &["init", "--force"], &[]);
    assert!(forced.starts_with("exit code: 0"), "{forced}");
    let shipped = std::fs::read_to_string(dir.path().join("mappings/hubspot.toml")).unwrap();
    assert!(shipped.contains("connector = \"hubspot\""), "{shipped}");
}

#[test]
fn schema_prints_the_committed_schema_files() {
    let dir = tempfile::tempdir().unwrap();
    for kind in ["connector", "mapping"] {
        let transcript = run_engine(dir.path(), &["schema", kind], &[]);
        let committed = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("schemas/{kind}.schema.json")),
        )
        .unwrap();
        assert_eq!(
            transcript,
            format!("exit code: 0\n----- stdout -----\n{committed}----- stderr -----\n")
        );
    }
}

#[test]
fn check_reads_database_url_as_run_does() {
    let dir = tempfile::tempdir().unwrap();
    run_engine(dir.path(), &["init"], &[]);
    // An empty database: the mappings' table is missing, and check says so.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let url = format!("sqlite://{}", dir.path().join("app.db").display());
    runtime.block_on(async {
        let store = engine::store::Store::connect(&url).await.unwrap();
        store.close().await;
    });
    let check = run_engine(dir.path(), &["check"], &[("DATABASE_URL", url.as_str())]);
    assert!(check.starts_with("exit code: 2"), "{check}");
    assert!(check.contains("engine migrate --mapping"), "{check}");
}

#[test]
fn read_only_commands_never_create_a_database_file() {
    let dir = tempfile::tempdir().unwrap();
    run_engine(dir.path(), &["init"], &[]);
    for args in [
        &["status"][..],
        &["check", "--database", "sqlite://engine.db"],
        &["history"],
        &["plan", "--connector", "hubspot"],
    ] {
        let transcript = run_engine(dir.path(), args, &[]);
        assert!(
            transcript.starts_with("exit code: 2"),
            "{args:?}: {transcript}"
        );
        assert!(
            transcript.contains("no database at engine.db"),
            "{args:?}: {transcript}"
        );
        assert!(
            !dir.path().join("engine.db").exists(),
            "{args:?} created it"
        );
    }
}

#[test]
fn completions_print_a_script_for_the_shell() {
    let dir = tempfile::tempdir().unwrap();
    let bash = run_engine(dir.path(), &["completions", "bash"], &[]);
    assert!(bash.starts_with("exit code: 0"), "{bash}");
    assert!(
        bash.contains("_engine()") && bash.contains("history"),
        "{bash}"
    );
}
