//! Templates: compile a TOML tree once, render it per row into JSON.

use std::sync::Arc;

use engine::template::{CompiledTree, OnEmpty, RenderError, Templates, analyse, is_helper};
use serde_json::{Value, json};

/// The clock every test pins through the reserved `__now` key.
const NOW: &str = "2025-12-02T15:04:05Z";

const HUBSPOT_FIELDS: &str = r#"
email = "{{lower email}}"
firstname = "{{first_name name}}"
lastname = "{{last_name name}}"
phone = "{{e164 phone_number}}"
domain_id = "{{domain_id}}"
page_id = "{{page_id}}"
sync_date = "{{today}}"
"#;

fn toml_tree(src: &str) -> Value {
    toml::from_str(src).expect("test TOML parses")
}

fn compile(templates: &mut Templates, tree: &Value) -> CompiledTree {
    templates
        .compile_tree("mappings/test.toml", tree)
        .unwrap_or_else(|errors| panic!("tree compiles: {errors:#?}"))
}

/// The seed's three contact rows (contacts-schema.md), as the store hands
/// them over: one JSON object per row, NULL as `null`, plus the pinned clock.
fn seed_rows() -> Vec<Value> {
    let phones = [json!("+1-555-9001"), json!("+1-555-9002"), Value::Null];
    phones
        .into_iter()
        .enumerate()
        .map(|(i, phone)| {
            let n = i + 1;
            json!({
                "id": format!("00000000-0000-4000-8000-00000000000{n}"),
                "email": format!("hubspot-scheduler-test-{n}@scrapersky-test.com"),
                "name": format!("Scheduler Test {n}"),
                "phone_number": phone,
                "domain_id": "1ad6264b-a0b6-4551-860a-1326b2bfa28f",
                "page_id": "ddc03eef-2550-46de-aca8-bbdb7cf525cb",
                "__now": NOW,
            })
        })
        .collect()
}

/// Renders a one-leaf tree to text (no omission), for helper tables.
fn render_one(template: &str, ctx: &Value) -> Result<String, RenderError> {
    let mut templates = Templates::new();
    let tree = compile(&mut templates, &json!(template));
    templates.render_str(&tree, ctx)
}

#[test]
fn the_seed_rows_render_to_hubspot_properties_and_a_null_phone_is_left_out() {
    let mut templates = Templates::new();
    let tree = compile(&mut templates, &toml_tree(HUBSPOT_FIELDS));
    for (i, row) in seed_rows().iter().enumerate() {
        let rendered = templates
            .render_tree(&tree, row, OnEmpty::default())
            .expect("seed row renders");
        insta::assert_json_snapshot!(format!("hubspot_seed_row_{}", i + 1), rendered);
    }
}

#[test]
fn rendering_a_context_given_away_matches_rendering_a_borrowed_one_and_hands_it_back() {
    let mut templates = Templates::new();
    let tree = compile(&mut templates, &toml_tree(HUBSPOT_FIELDS));
    let missing = compile(&mut templates, &json!({ "x": "{{no_such_column}}" }));
    for row in seed_rows() {
        let borrowed = templates.render_tree(&tree, &row, OnEmpty::default());
        let (owned, back) = templates.render_tree_owned(&tree, row.clone(), OnEmpty::default());
        assert_eq!(owned, borrowed);
        assert_eq!(back, row, "the context comes back unchanged");

        let (failed, back) = templates.render_tree_owned(&missing, row.clone(), OnEmpty::Omit);
        assert!(failed.is_err(), "{failed:?}");
        assert_eq!(back, row, "even when rendering fails");
    }
}

#[test]
fn a_consumed_context_renders_exactly_like_a_borrowed_one_whether_values_move_or_not() {
    let mut templates = Templates::new();
    let ctx = json!({
        "items": [{"id": "a@x.io", "properties": {"n": 1}}, {"id": "b@x.io"}],
        "params": {"list": 7},
        "empty": "",
    });
    let trees = [
        // Disjoint typed insertions only: the values move.
        json!({"inputs": "{{items}}", "list": "{{params.list}}", "kind": "upsert", "n": 3, "gone": "{{empty}}"}),
        // Overlapping paths and text around a variable: rendered as before.
        json!({"inputs": "{{items}}", "first": "{{items.0.id}}"}),
        json!({"note": "list {{params.list}}", "inputs": "{{items}}"}),
    ];
    for tree in trees {
        let tree = compile(&mut templates, &tree);
        let borrowed = templates.render_tree(&tree, &ctx, OnEmpty::Omit);
        let consumed = templates.render_tree_consuming(&tree, ctx.clone(), OnEmpty::Omit);
        assert_eq!(consumed, borrowed);
        assert!(consumed.is_ok(), "{consumed:?}");
    }
    let missing = compile(&mut templates, &json!({"inputs": "{{itms}}"}));
    let borrowed = templates
        .render_tree(&missing, &ctx, OnEmpty::Omit)
        .unwrap_err();
    let consumed = templates
        .render_tree_consuming(&missing, ctx.clone(), OnEmpty::Omit)
        .unwrap_err();
    assert_eq!(consumed.to_string(), borrowed.to_string());
}

#[test]
fn a_name_with_quotes_backslashes_newlines_and_emoji_round_trips_exactly_through_json() {
    let name = "Zoë \"The Hammer\" O'Neil \\ backslash\nsecond line\t🎉👩‍👩‍👧 </script>";
    let mut templates = Templates::new();
    let tree = compile(
        &mut templates,
        &json!({"name": "{{name}}", "firstname": "{{first_name name}}", "greeting": "Hi {{name}}!"}),
    );
    let rendered = templates
        .render_tree(&tree, &json!({"name": name}), OnEmpty::Omit)
        .unwrap();

    let text = serde_json::to_string(&rendered).unwrap();
    let parsed: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(parsed, rendered);
    assert_eq!(parsed["name"], name);
    assert_eq!(parsed["firstname"], "Zoë");
    assert_eq!(parsed["greeting"], format!("Hi {name}!"));
}

#[test]
fn a_lone_expression_inserts_objects_arrays_numbers_and_bools_as_they_are() {
    let mut templates = Templates::new();
    let tree = compile(
        &mut templates,
        &toml_tree(
            r#"
            properties = "{{fields}}"
            contacts = "{{items}}"
            listIds = "{{params.list_ids}}"
            attempts = "{{ retry_count }}"
            first_list = "{{params.list_ids.[0]}}"
            vip = "{{vip}}"
            label = "attempt {{retry_count}}"
            updateEnabled = true
            limit = 100
            "#,
        ),
    );
    let ctx = json!({
        "fields": {"email": "a@b.com", "age": 42},
        "items": [{"email": "a@b.com"}, {"email": "c@d.com"}],
        "params": {"list_ids": [7, 9]},
        "retry_count": 2,
        "vip": false,
    });
    let rendered = templates.render_tree(&tree, &ctx, OnEmpty::Omit).unwrap();
    assert_eq!(
        rendered,
        json!({
            "properties": {"email": "a@b.com", "age": 42},
            "contacts": [{"email": "a@b.com"}, {"email": "c@d.com"}],
            "listIds": [7, 9],
            "attempts": 2,
            "first_list": 7,
            "vip": false,
            "label": "attempt 2",
            "updateEnabled": true,
            "limit": 100,
        })
    );
}

#[test]
fn empty_values_follow_on_empty_in_tables_and_arrays() {
    let mut templates = Templates::new();
    let tree = compile(
        &mut templates,
        &json!({
            "phone": "{{phone}}",
            "note": "{{lower note}}",
            "blank": "{{blank}}",
            "tags": ["{{a}}", "{{b}}", "fixed"],
            "nested": {"mobile": "{{phone}}"},
            "zero": "{{zero}}",
            "nothing": "{{empty_list}}",
        }),
    );
    let ctx = json!({"phone": null, "note": null, "blank": "", "a": "x", "b": null, "zero": 0, "empty_list": []});
    let cases = [
        (
            OnEmpty::Omit,
            json!({"tags": ["x", "fixed"], "nested": {}, "zero": 0, "nothing": []}),
        ),
        (
            OnEmpty::EmptyString,
            json!({"phone": "", "note": "", "blank": "", "tags": ["x", "", "fixed"], "nested": {"mobile": ""}, "zero": 0, "nothing": []}),
        ),
        (
            OnEmpty::Null,
            json!({"phone": null, "note": null, "blank": null, "tags": ["x", null, "fixed"], "nested": {"mobile": null}, "zero": 0, "nothing": []}),
        ),
    ];
    for (on_empty, want) in cases {
        let rendered = templates.render_tree(&tree, &ctx, on_empty).unwrap();
        assert_eq!(rendered, want, "{on_empty:?}");
        let text = rendered.to_string();
        assert!(
            !text.contains("None") && !text.contains("\"null\""),
            "{text}"
        );
    }
}

#[test]
fn on_empty_reads_from_toml_in_snake_case() {
    #[derive(serde::Deserialize)]
    struct Mapping {
        on_empty: OnEmpty,
    }
    for (text, want) in [
        ("omit", OnEmpty::Omit),
        ("empty_string", OnEmpty::EmptyString),
        ("null", OnEmpty::Null),
    ] {
        let m: Mapping = toml::from_str(&format!("on_empty = {text:?}")).unwrap();
        assert_eq!(m.on_empty, want);
    }
    assert_eq!(OnEmpty::default(), OnEmpty::Omit);
}

#[test]
fn a_variable_that_is_not_a_column_is_an_error_that_names_it() {
    let mut templates = Templates::new();
    let row = &seed_rows()[0];
    let cases = [
        (
            "{{e164 phone_numbr}}",
            "phone",
            "variable `phone_numbr` is not a column of the row",
        ),
        (
            "{{phone_numbr}}",
            "phone",
            "variable `phone_numbr` is not a column of the row",
        ),
        (
            "+{{phone_numbr}}",
            "phone",
            "variable `phone_numbr` is not a column of the row",
        ),
        (
            "{{lower (trim emial)}}",
            "phone",
            "variable `emial` is not a column of the row",
        ),
        (
            "{{params.list_id}}",
            "phone",
            "variable `params.list_id` is not in the render context",
        ),
    ];
    for (template, leaf, message) in cases {
        let tree = compile(&mut templates, &json!({"phone": template}));
        let err = templates
            .render_tree(&tree, row, OnEmpty::Omit)
            .expect_err(template);
        assert_eq!(err.leaf, leaf, "{template}");
        assert_eq!(err.message, message, "{template}");
        assert_eq!(err.to_string(), format!("`{leaf}`: {message}"));
    }
}

#[test]
fn html_is_never_escaped() {
    let ctx = json!({"company": "a&b <c> \"d\" 'e'"});
    assert_eq!(
        render_one("{{company}}", &ctx).unwrap(),
        "a&b <c> \"d\" 'e'"
    );
    assert_eq!(
        render_one("{{trim company}}!", &ctx).unwrap(),
        "a&b <c> \"d\" 'e'!"
    );
}

#[test]
fn every_helper_renders_as_documented() {
    let ctx = json!({
        "__now": NOW,
        "email": "  Hubspot-Scheduler-Test-1@ScraperSky-Test.com ",
        "name": "Scheduler Test 1",
        "mononym": "Cher",
        "phone": "+1-555-9001",
        "uk": "020 7946 0000",
        "local": "555-9001",
        "intl": "0044 20 7946 0000",
        "nothing": null,
        "blank": "",
        "word": "hello",
        "addr": "a+b@x.com/y z",
        "tags": ["a", "b"],
        "quote": "x\"y",
        "count": 3,
        "pg_ts": "2025-01-31 23:30:00-02",
        "ts": "2025-01-31T10:00:00Z",
        "day": "2025-01-31",
    });
    let cases: &[(&str, &str)] = &[
        (
            "{{lower email}}",
            "  hubspot-scheduler-test-1@scrapersky-test.com ",
        ),
        (
            "{{lower (trim email)}}",
            "hubspot-scheduler-test-1@scrapersky-test.com",
        ),
        ("{{upper word}}", "HELLO"),
        (
            "{{trim email}}",
            "Hubspot-Scheduler-Test-1@ScraperSky-Test.com",
        ),
        ("{{lower nothing}}{{upper nothing}}{{trim nothing}}", ""),
        ("{{upper count}}", "3"),
        ("{{first_name name}}", "Scheduler"),
        ("{{last_name name}}", "Test 1"),
        ("{{first_name mononym}}|{{last_name mononym}}", "Cher|"),
        ("{{first_name nothing}}{{last_name nothing}}", ""),
        ("{{today}}", "2025-12-02"),
        ("{{today_epoch_ms}}", "1764633600000"),
        ("{{e164 phone}}", "+15559001"),
        ("{{e164 intl}}", "+442079460000"),
        ("{{e164 local}}", "5559001"),
        ("{{e164 local 1}}", "+15559001"),
        ("{{e164 uk \"44\"}}", "+442079460000"),
        ("{{e164 nothing \"44\"}}", ""),
        ("{{md5 word}}", "5d41402abc4b2a76b9719d911017c592"),
        (
            "{{md5 (lower (trim addr))}}",
            "c39d1162fefb0540b6af1bd71fd98cbd",
        ),
        ("{{md5 nothing}}{{md5 blank}}", ""),
        (
            "{{sha256 word}}",
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        ),
        ("{{sha256 nothing}}", ""),
        ("{{urlencode addr}}", "a%2Bb%40x.com%2Fy%20z"),
        ("{{urlencode nothing}}", ""),
        ("{{default nothing \"n/a\"}}", "n/a"),
        ("{{default blank \"n/a\"}}", "n/a"),
        ("{{default word \"n/a\"}}", "hello"),
        ("{{coalesce nothing blank word}}", "hello"),
        ("{{coalesce nothing blank}}", ""),
        ("{{e164 (coalesce nothing phone)}}", "+15559001"),
        ("{{json tags}}", "[\"a\",\"b\"]"),
        ("{{json quote}}", "\"x\\\"y\""),
        ("{{json count}}", "3"),
        ("{{json nothing}}", ""),
        ("{{date_ymd pg_ts}}", "2025-02-01"),
        ("{{date_ymd day}}", "2025-01-31"),
        ("{{date_ymd nothing}}", ""),
        ("{{epoch_ms ts}}", "1738317600000"),
        ("{{epoch_ms day}}", "1738281600000"),
        ("{{epoch_ms (date_ymd ts)}}", "1738281600000"),
        ("{{epoch_ms nothing}}", ""),
    ];
    for &(template, want) in cases {
        let got = render_one(template, &ctx);
        assert_eq!(got.as_deref(), Ok(want), "{template}");
    }
}

#[test]
fn helpers_reject_what_they_cannot_convert_with_a_message() {
    let ctx = json!({"__now": "yesterday", "tags": ["a"], "day": "31/01/2025", "phone": "555"});
    let cases = [
        (
            "{{today}}",
            "helper `today`: `__now` is not an RFC 3339 timestamp",
        ),
        (
            "{{lower tags}}",
            "helper `lower`: expected text, got an array",
        ),
        (
            "{{date_ymd day}}",
            "helper `date_ymd`: \"31/01/2025\" is not a timestamp or date",
        ),
        (
            "{{e164 phone \"abc\"}}",
            "helper `e164`: default country code \"abc\" is not a calling code",
        ),
    ];
    for (template, start) in cases {
        let err = render_one(template, &ctx).expect_err(template);
        assert!(
            err.message.starts_with(start),
            "{template}: {}",
            err.message
        );
    }
}

#[test]
fn today_without_a_pinned_clock_is_the_current_utc_date() {
    let before = chrono::Utc::now().date_naive().to_string();
    let got = render_one("{{today}}", &json!({})).unwrap();
    let after = chrono::Utc::now().date_naive().to_string();
    assert!(got == before || got == after, "{got}");
}

#[test]
fn the_pinned_clock_is_read_in_utc() {
    let ctx = json!({"__now": "2025-12-02T23:30:00-05:00"});
    assert_eq!(render_one("{{today}}", &ctx).unwrap(), "2025-12-03");
    assert_eq!(
        render_one("{{today_epoch_ms}}", &ctx).unwrap(),
        "1764720000000"
    );
}

#[test]
fn path_templates_percent_encode_interpolated_values_but_not_the_literal_text() {
    let mut templates = Templates::new();
    let ctx = json!({
        "key": "A+B@x.com",
        "params": {"list_id": "abc/123"},
        "id": 176_559_342_616_u64,
        "prefix": "v3/objects",
        "nothing": null,
    });
    let cases = [
        ("/v3/contacts/{{key}}", "/v3/contacts/A%2BB%40x.com"),
        (
            "/v3/contacts/{{id}}?idProperty=email",
            "/v3/contacts/176559342616?idProperty=email",
        ),
        (
            "/lists/{{params.list_id}}/members/{{md5 (lower key)}}",
            "/lists/abc%2F123/members/d2aa1956a2a6ec19b3523557ab1a38e6",
        ),
        (
            "/{{{prefix}}}/contacts/{{lower key}}",
            "/v3/objects/contacts/a%2Bb%40x.com",
        ),
    ];
    for (template, want) in cases {
        let path = templates
            .compile_path("connectors/test.toml:path", template)
            .unwrap();
        assert_eq!(
            templates.render_path(&path, &ctx).unwrap(),
            want,
            "{template}"
        );
    }

    let path = templates
        .compile_path("p", "/v3/contacts/{{nothing}}")
        .unwrap();
    let err = templates.render_path(&path, &ctx).unwrap_err();
    assert!(
        err.message.contains("/v3/contacts/{empty}"),
        "{}",
        err.message
    );
    let path = templates.compile_path("p", "/v3/contacts/{{kee}}").unwrap();
    let err = templates.render_path(&path, &ctx).unwrap_err();
    assert_eq!(err.message, "variable `kee` is not a column of the row");
    let err = templates.compile_path("p", "/v3/{{lowr key}}").unwrap_err();
    assert_eq!((err.line, err.column), (1, 7));
    assert_eq!(err.message, "unknown helper `lowr`; did you mean `lower`?");
}

#[test]
fn render_str_renders_one_leaf_as_text_without_omitting_it() {
    let mut templates = Templates::new();
    let ctx = json!({"token": "abc", "nothing": null, "count": 2});
    let cases = [
        (json!("Bearer {{token}}"), "Bearer abc"),
        (json!("{{nothing}}"), ""),
        (json!("{{count}}"), "2"),
        (json!(25), "25"),
        (json!("email"), "email"),
        (json!("\\{{not_a_variable}}"), "{{not_a_variable}}"),
    ];
    for (tree, want) in cases {
        let compiled = compile(&mut templates, &tree);
        assert_eq!(
            templates.render_str(&compiled, &ctx).unwrap(),
            want,
            "{tree}"
        );
    }
    let table = compile(&mut templates, &json!({"a": "{{token}}"}));
    assert!(templates.render_str(&table, &ctx).is_err());
}

#[test]
fn compile_tree_reports_every_broken_leaf_with_its_key_path() {
    let mut templates = Templates::new();
    let tree = toml_tree(
        r#"
        [fields]
        firstname = "{{first_name name}"
        phone = "{{e146 phone_number}}"
        ok = "{{lower email}}"
        "odd.key" = "{{first_name name \"x\"}}"

        [[items]]
        tags = ["fine", "{{#each tags}}{{this}}"]
        "#,
    );
    let errors = templates
        .compile_tree("mappings/hubspot.toml", &tree)
        .unwrap_err();
    // In the order the keys are written (toml's `preserve_order` is on).
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "`fields.firstname` line 1, column 1: `{{` is never closed: add `}}`",
            "`fields.phone` line 1, column 3: unknown helper `e146`; did you mean `e164`?",
            "`fields.\"odd.key\"` line 1, column 3: helper `first_name` takes 1 argument, got 2",
            "`items[0].tags[1]` line 1, column 1: `{{#each}}` is never closed: add `{{/each}}`",
        ]
    );
}

#[test]
fn analysis_finds_root_variables_and_helpers() {
    let cases: &[(&str, &[&str], &[&str])] = &[
        ("{{lower (trim email)}}", &["email"], &["lower", "trim"]),
        ("{{params.list_id}}", &["params"], &[]),
        ("{{today}} {{sync_date}}", &["sync_date"], &["today"]),
        ("{{e164 phone_number \"1\"}}", &["phone_number"], &["e164"]),
        (
            "{{#if vip}}VIP {{name}}{{else}}{{default nickname \"n/a\"}}{{/if}}",
            &["vip", "name", "nickname"],
            &["if", "default"],
        ),
        (
            "{{#each items}}{{email}} {{../domain_id}} {{@root.page_id}} {{@index}}{{/each}}",
            &["items", "domain_id", "page_id"],
            &["each"],
        ),
        (
            "{{#each items as |item|}}{{item.email}}{{lower this.name}}{{/each}}",
            &["items"],
            &["each", "lower"],
        ),
        (
            "{{#with params}}{{list_id}}{{/with}}{{owner}}",
            &["params", "owner"],
            &["with"],
        ),
        ("{{this}} {{!-- a {{comment}} --}} \\{{escaped}}", &[], &[]),
        (
            "{{coalesce a (lower b) c}}",
            &["a", "b", "c"],
            &["coalesce", "lower"],
        ),
        (
            "{{#if a}}x{{else if b}}y{{else}}{{#unless c}}z{{/unless}}{{/if}}",
            &["a", "b", "c"],
            &["if", "unless"],
        ),
        (
            "{{#each items}}{{#if active}}{{name}} {{../owner}}{{/if}}{{/each}}",
            &["items", "owner"],
            &["each", "if"],
        ),
        (
            "{{eq status \"Queued\"}} {{lookup params key}}",
            &["status", "params", "key"],
            &["eq", "lookup"],
        ),
    ];
    for &(template, variables, helpers) in cases {
        let a = analyse(template);
        assert_eq!(a.errors, [], "{template}");
        assert_eq!(a.variables, variables, "{template}");
        assert_eq!(a.helpers, helpers, "{template}");
    }
}

#[test]
fn analysis_reports_unknown_helpers_with_a_suggestion_at_their_position() {
    let a = analyse("Hello {{frist_name name}},\n{{lower (uper email)}} {{shout x}}");
    let shown: Vec<_> = a
        .errors
        .iter()
        .map(|e| (e.line, e.column, e.message.as_str()))
        .collect();
    assert_eq!(
        shown,
        [
            (
                1,
                9,
                "unknown helper `frist_name`; did you mean `first_name`?"
            ),
            (2, 10, "unknown helper `uper`; did you mean `upper`?"),
            (2, 26, "unknown helper `shout`"),
        ]
    );
    assert_eq!(a.helpers, ["frist_name", "lower", "uper", "shout"]);
    assert_eq!(a.variables, ["name", "email", "x"]);
    for name in ["lower", "e164", "today_epoch_ms", "each"] {
        assert!(is_helper(name));
    }
}

#[test]
fn analysis_reports_syntax_errors_with_line_and_column_inside_the_template() {
    let cases: &[(&str, usize, usize, &str)] = &[
        ("{{lower email}", 1, 1, "`{{` is never closed: add `}}`"),
        (
            "Hi\n  {{lower email",
            2,
            3,
            "`{{` is never closed: add `}}`",
        ),
        (
            "{{lower (trim email}}",
            1,
            1,
            "unclosed `(` in `{{lower (trim email}}`",
        ),
        (
            "{{default x \"n/a}}",
            1,
            1,
            "unterminated string literal in `{{default x \"n/a}}`",
        ),
        (
            "a\nb {{#if vip}}x",
            2,
            3,
            "`{{#if}}` is never closed: add `{{/if}}`",
        ),
        (
            "{{#if vip}}x{{/each}}",
            1,
            13,
            "`{{/each}}` closes `{{#if}}`; close it with `{{/if}}`",
        ),
        (
            "x{{/if}}",
            1,
            2,
            "`{{/if}}` closes a block that was never opened",
        ),
        ("{{}}", 1, 1, "empty expression `{{}}`"),
        (
            "{{> header}}",
            1,
            1,
            "partials (`{{> name}}`) and decorators",
        ),
    ];
    for &(template, line, column, start) in cases {
        let a = analyse(template);
        let [e] = a.errors.as_slice() else {
            panic!("{template}: expected one error, got {:#?}", a.errors);
        };
        assert_eq!(
            (e.line, e.column),
            (line, column),
            "{template}: {}",
            e.message
        );
        assert!(e.message.starts_with(start), "{template}: {}", e.message);
        assert_eq!(e.leaf, "");
    }
}

#[test]
fn templates_render_concurrently_from_many_threads() {
    let mut templates = Templates::new();
    let tree = Arc::new(compile(&mut templates, &toml_tree(HUBSPOT_FIELDS)));
    let templates = Arc::new(templates);
    let rows = seed_rows();
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let (templates, tree, row) = (templates.clone(), tree.clone(), rows[i % 3].clone());
            std::thread::spawn(move || {
                let mut last = Value::Null;
                for _ in 0..50 {
                    last = templates.render_tree(&tree, &row, OnEmpty::Omit).unwrap();
                }
                last
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let rendered = h.join().unwrap();
        assert_eq!(rendered["firstname"], "Scheduler");
        assert_eq!(rendered["lastname"], format!("Test {}", i % 3 + 1));
    }
}

#[test]
fn block_scopes_render_the_way_analysis_reads_them() {
    let template =
        "{{#each items}}{{#if active}}{{name}}/{{../owner}}/{{@root.owner}};{{/if}}{{/each}}";
    let ctx = json!({
        "owner": "o",
        "items": [{"name": "a", "active": true}, {"name": "b", "active": false}],
    });
    assert_eq!(render_one(template, &ctx).unwrap(), "a/o/o;");
    assert_eq!(analyse(template).variables, ["items", "owner"]);
}

/// A lone helper call is evaluated without handlebars; a comment after it
/// (`{{!}}`) sends the same call through handlebars. Both must agree on
/// every value and every error.
#[test]
fn helper_calls_evaluated_directly_match_handlebars_exactly() {
    let templates_text = [
        "{{lower email}}",
        "{{lower (trim email)}}",
        "{{{lower email}}}",
        "{{upper name}}",
        "{{first_name name}}",
        "{{last_name name}}",
        "{{e164 phone_number}}",
        "{{e164 phone_number \"44\"}}",
        "{{md5 email}}",
        "{{sha256 (lower (trim email))}}",
        "{{urlencode name}}",
        "{{default nickname \"n/a\"}}",
        "{{default (lower nickname) (upper name)}}",
        "{{coalesce nickname name \"x\"}}",
        "{{json tags}}",
        "{{json params}}",
        "{{date_ymd created_at}}",
        "{{epoch_ms created_at}}",
        "{{today}}",
        "{{today_epoch_ms}}",
        "{{lower missing_column}}",
        "{{lower params.list_id}}",
        "{{lower params.nope}}",
        "{{lower tags}}",
        "{{trim count}}",
        "{{lower flag}}",
        "{{e164 (lower missing_column)}}",
    ];
    let contexts = [
        json!({"email": "  Jane@Example.COM ", "name": "Jane van Doe", "phone_number": "+1 (415) 555-0100",
               "nickname": null, "tags": ["a", 1, null], "params": {"list_id": "L7"}, "count": 3,
               "flag": true, "created_at": "2025-11-19T02:13:46.5Z", "__now": "2026-01-02T23:59:00Z"}),
        json!({"email": null, "name": "", "phone_number": null, "nickname": "Jay", "tags": [],
               "params": {}, "count": 0, "flag": false, "created_at": "not a date"}),
        json!({"email": "x@y.z", "name": "Prince", "phone_number": "555-0100", "nickname": "",
               "tags": {"k": "v"}, "params": {"list_id": 12}, "count": -1.5, "flag": null,
               "created_at": 1700000000000_i64, "__now": "yesterday"}),
    ];
    let mut templates = Templates::new();
    for text in templates_text {
        let direct = compile(&mut templates, &json!({ "f": text }));
        let via_handlebars = compile(&mut templates, &json!({ "f": format!("{text}{{{{!}}}}") }));
        for ctx in &contexts {
            for on_empty in [OnEmpty::Omit, OnEmpty::Null] {
                assert_eq!(
                    templates.render_tree(&direct, ctx, on_empty),
                    templates.render_tree(&via_handlebars, ctx, on_empty),
                    "{text} with {ctx}"
                );
            }
        }
    }
}
