//! `engine check`: the shipped config is clean, and each kind of broken config is
//! reported at its file, line, column and key path, with a hint.

use crate::support::{ConfigDir, replacing, run_engine};

const SECRETS: &[(&str, &str)] = &[("HUBSPOT_ACCESS_TOKEN", "x"), ("BREVO_API_KEY", "x")];

fn check(config: &ConfigDir) -> String {
    run_engine(config.path(), &["check"], SECRETS)
}

#[test]
fn the_shipped_config_is_clean() {
    let config = ConfigDir::shipped();
    insta::assert_snapshot!(check(&config));
}

#[test]
fn missing_secret_variables_are_warnings_not_errors() {
    let config = ConfigDir::shipped();
    insta::assert_snapshot!(run_engine(config.path(), &["check"], &[]));
}

#[test]
fn an_unknown_key_is_reported_with_a_suggestion() {
    let config = ConfigDir::shipped();
    config.edit(
        "connectors/hubspot.toml",
        "base_delay_ms = 500",
        "base_delay_msec = 500",
    );
    insta::assert_snapshot!(check(&config));
}

#[test]
fn a_wrong_type_is_reported_at_the_value() {
    let config = ConfigDir::shipped();
    config.edit(
        "connectors/hubspot.toml",
        "timeout_secs = 30",
        "timeout_secs = \"30\"",
    );
    insta::assert_snapshot!(check(&config));
}

#[test]
fn a_template_that_does_not_compile_points_inside_the_string() {
    let config = ConfigDir::shipped();
    config.edit(
        "mappings/hubspot.toml",
        "\"{{first_name name}}\"",
        "\"{{first_name name}\"",
    );
    insta::assert_snapshot!(check(&config));
}

#[test]
fn an_unknown_helper_is_reported_with_a_suggestion() {
    let config = ConfigDir::shipped();
    config.edit(
        "mappings/brevo.toml",
        "{{e164 phone_number}}",
        "{{e165 phone_number}}",
    );
    insta::assert_snapshot!(check(&config));
}

#[test]
fn a_template_column_missing_from_the_table_is_reported_with_a_database() {
    let config = ConfigDir::shipped();
    config.edit(
        "mappings/hubspot.toml",
        "{{e164 phone_number}}",
        "{{e164 phone_numbr}}",
    );
    let db = format!("sqlite://{}", config.path().join("check.db").display());
    let migrated = run_engine(
        config.path(),
        &["migrate", "--mapping", "brevo", "--database", &db],
        SECRETS,
    );
    assert!(migrated.starts_with("exit code: 0"), "{migrated}");
    let checked = run_engine(config.path(), &["check", "--database", &db], SECRETS);
    replacing(&[(&db, "[DB]")]).bind(|| insta::assert_snapshot!(checked));
}

#[test]
fn a_mapping_naming_a_missing_connector_is_reported() {
    let config = ConfigDir::shipped();
    config.edit(
        "mappings/hubspot.toml",
        "connector = \"hubspot\"",
        "connector = \"hubspott\"",
    );
    insta::assert_snapshot!(check(&config));
}

#[test]
fn a_literal_secret_is_refused() {
    let config = ConfigDir::shipped();
    config.edit(
        "connectors/hubspot.toml",
        "token_env = \"HUBSPOT_ACCESS_TOKEN\"",
        "token = \"pat-na1-1234\"",
    );
    insta::assert_snapshot!(check(&config));
}

#[test]
fn a_secret_pasted_into_an_env_name_is_refused_without_echoing_it() {
    let config = ConfigDir::shipped();
    config.edit(
        "connectors/brevo.toml",
        "key_env = \"BREVO_API_KEY\"",
        "key_env = \"xkeysib-0123456789abcdef\"",
    );
    let output = check(&config);
    assert!(
        !output.contains("0123456789abcdef"),
        "the secret was echoed: {output}"
    );
    insta::assert_snapshot!(output);
}

#[test]
fn a_secret_pasted_into_a_scheme_or_a_key_prefix_is_refused_without_echoing_it() {
    let config = ConfigDir::shipped();
    config
        .edit(
            "connectors/hubspot.toml",
            "token_env = \"HUBSPOT_ACCESS_TOKEN\"",
            "token_env = \"HUBSPOT_ACCESS_TOKEN\"\nscheme = \"Bearer pat-na1-0123456789abcdef\"",
        )
        .edit(
            "connectors/brevo.toml",
            "key_env = \"BREVO_API_KEY\"",
            "key_env = \"BREVO_API_KEY\"\nprefix = \"xkeysib-0123456789abcdef0123456789\"",
        );
    let output = check(&config);
    assert!(
        !output.contains("0123456789abcdef"),
        "the secret was echoed: {output}"
    );
    insta::assert_snapshot!(output);
}

#[test]
fn a_column_spelt_like_a_helper_gets_a_warning() {
    let config = ConfigDir::shipped();
    config.edit("mappings/hubspot.toml", "{{today}}", "{{todya}}");
    insta::assert_snapshot!(check(&config));
}

#[test]
fn a_bad_base_url_is_reported() {
    let config = ConfigDir::shipped();
    config.edit(
        "connectors/hubspot.toml",
        "base_url = \"https://api.hubapi.com\"",
        "base_url = \"api.hubapi.com\"",
    );
    insta::assert_snapshot!(check(&config));
}

#[test]
fn a_rate_limit_of_zero_requests_is_reported() {
    let config = ConfigDir::shipped();
    config.edit("connectors/brevo.toml", "requests = 10\n", "requests = 0\n");
    insta::assert_snapshot!(check(&config));
}

#[test]
fn a_duplicate_field_is_reported() {
    let config = ConfigDir::shipped();
    config.edit(
        "mappings/hubspot.toml",
        "lastname = ",
        "firstname = \"{{name}}\"\nlastname = ",
    );
    insta::assert_snapshot!(check(&config));
}

#[test]
fn a_zero_batch_size_is_reported() {
    let config = ConfigDir::shipped();
    config.edit("mappings/brevo.toml", "batch_size = 50", "batch_size = 0");
    insta::assert_snapshot!(check(&config));
}

#[test]
fn an_unknown_auth_kind_is_reported_with_the_known_kinds() {
    let config = ConfigDir::shipped();
    config.edit(
        "connectors/hubspot.toml",
        "kind = \"bearer\"",
        "kind = \"beare\"",
    );
    insta::assert_snapshot!(check(&config));
}

#[test]
fn every_problem_in_every_file_is_reported_at_once() {
    let config = ConfigDir::shipped();
    config
        .edit(
            "connectors/hubspot.toml",
            "timeout_secs = 30",
            "timeout_secs = -1",
        )
        .edit(
            "connectors/brevo.toml",
            "max_attempts = 3",
            "max_attempt = 3",
        )
        .edit(
            "mappings/hubspot.toml",
            "connector = \"hubspot\"",
            "connector = \"hubspot\"\non_empty = \"nul\"",
        );
    let output = check(&config);
    assert!(output.contains("3 errors"), "{output}");
    insta::assert_snapshot!(output);
}

#[test]
fn a_rule_that_updates_needs_an_update_operation_and_a_capture_group() {
    let config = ConfigDir::shipped();
    config
        .edit(
            "connectors/hubspot.toml",
            "message_regex = 'Existing ID: (\\d+)', ",
            "",
        )
        .edit(
            "connectors/hubspot.toml",
            "mode = \"batch\"",
            "mode = \"lookup_then_write\"",
        );
    insta::assert_snapshot!(check(&config));
}

#[test]
fn the_example_connectors_of_six_other_crms_pass_check() {
    let config = ConfigDir::shipped();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in [
        "pipedrive",
        "mailchimp",
        "activecampaign",
        "salesforce",
        "salesforce-collections",
        "attio",
        "intercom",
    ] {
        let text = std::fs::read_to_string(repo.join(format!("connectors/{name}.toml"))).unwrap();
        config.write(&format!("connectors/{name}.toml"), &text);
    }
    let output = check(&config);
    assert!(output.starts_with("exit code: 0"), "{output}");
    assert!(
        output.contains("ok: 9 connectors, 2 mappings checked (0 errors, 0 warnings)"),
        "{output}"
    );
}

#[test]
fn a_bulk_flow_that_could_never_run_or_reads_an_unknown_variable_is_reported_at_its_keys() {
    let config = ConfigDir::shipped();
    config.edit(
        "connectors/brevo.toml",
        "min_rows = 100",
        "min_rows = 20000",
    );
    config.edit(
        "connectors/brevo.toml",
        "path = \"/processes/{{job}}\"",
        "path = \"/processes/{{process_id}}\"",
    );
    insta::assert_snapshot!(check(&config));
}

#[test]
fn a_bulk_poll_backoff_below_one_is_reported_at_its_value() {
    let config = ConfigDir::shipped();
    config.edit("connectors/brevo.toml", "backoff = 2.0", "backoff = 0.5");
    insta::assert_snapshot!(check(&config));
}

#[test]
fn an_unknown_key_in_the_bulk_flow_is_reported_with_a_suggestion() {
    let config = ConfigDir::shipped();
    config.edit(
        "connectors/brevo.toml",
        "page_size = 1000",
        "page_sise = 1000",
    );
    insta::assert_snapshot!(check(&config));
}
