//! Every class of invalid manifest gets an error that names the exact field.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;

use squall_api::{ComponentCatalog, ComponentDecl, ComponentKind, TopologySpec, validate};

const WORD_COUNT: &str = r#"
apiVersion: squall.dev/v1alpha1
kind: Topology
metadata: {name: word-count}
spec:
  image: squall-examples:dev
  workers: 2
  spouts:
    - {id: sentences, component: RandomSentenceSpout, parallelism: 2}
  bolts:
    - {id: split, component: SplitSentence, parallelism: 2}
    - {id: count, component: WordCount, parallelism: 2, tasks: 4}
  streams:
    - {from: sentences, to: split, grouping: {type: SHUFFLE}}
    - {from: split, to: count, grouping: {type: FIELDS, fields: [word]}}
"#;

fn catalog() -> ComponentCatalog {
    let decl = |kind, fields: &[&str]| ComponentDecl {
        kind,
        outputs: BTreeMap::from([(
            "default".to_string(),
            fields.iter().map(|f| f.to_string()).collect(),
        )]),
    };
    ComponentCatalog {
        components: BTreeMap::from([
            (
                "RandomSentenceSpout".to_string(),
                decl(ComponentKind::Spout, &["sentence"]),
            ),
            (
                "SplitSentence".to_string(),
                decl(ComponentKind::Bolt, &["word"]),
            ),
            (
                "WordCount".to_string(),
                decl(ComponentKind::Bolt, &["word", "count"]),
            ),
        ]),
    }
}

fn spec() -> TopologySpec {
    let (name, spec) = TopologySpec::from_manifest(WORD_COUNT).expect("parses");
    assert_eq!(name.as_deref(), Some("word-count"));
    spec
}

/// Apply `edit` to the valid word count and expect an error at exactly `field`.
fn expect_error(edit: impl FnOnce(&mut TopologySpec), field: &str, words: &str) {
    let mut s = spec();
    edit(&mut s);
    let errs = validate(&s, Some(&catalog())).expect_err("must be rejected");
    let hit = errs.0.iter().find(|e| e.field == field);
    assert!(hit.is_some(), "expected an error at {field}, got: {errs}");
    let msg = hit.map(|e| e.message.clone()).unwrap_or_default();
    assert!(
        msg.contains(words),
        "message for {field} should mention {words:?}: {msg}"
    );
}

#[test]
fn the_valid_manifest_passes() {
    validate(&spec(), Some(&catalog())).expect("valid");
    // Defaults from the schema are applied when a bare spec is parsed.
    let s = spec();
    assert!(s.active);
    assert_eq!(s.message_timeout_seconds, 30);
    assert_eq!(s.acker_count(), 2);
    assert_eq!(s.streams[0].stream, "default");
}

#[test]
fn unknown_from_to_and_stream() {
    expect_error(
        |s| s.streams[0].from = "nope".into(),
        "spec.streams[0].from",
        "nope",
    );
    expect_error(
        |s| s.streams[1].to = "nada".into(),
        "spec.streams[1].to",
        "nada",
    );
    expect_error(
        |s| s.streams[1].stream = "words".into(),
        "spec.streams[1].stream",
        "words",
    );
    expect_error(
        |s| s.streams[0].to = "sentences".into(),
        "spec.streams[0].to",
        "spout",
    );
}

#[test]
fn fields_grouping_on_an_undeclared_field() {
    expect_error(
        |s| s.streams[1].grouping.fields = vec!["word".into(), "colour".into()],
        "spec.streams[1].grouping.fields[1]",
        "colour",
    );
}

#[test]
fn duplicate_ids() {
    expect_error(
        |s| s.bolts[1].id = "split".into(),
        "spec.bolts[1].id",
        "duplicate",
    );
    expect_error(
        |s| s.bolts[0].id = "sentences".into(),
        "spec.bolts[0].id",
        "duplicate",
    );
}

#[test]
fn parallelism_bounds() {
    expect_error(
        |s| s.bolts[0].parallelism = 0,
        "spec.bolts[0].parallelism",
        "at least 1",
    );
    expect_error(
        |s| s.bolts[1].parallelism = 5,
        "spec.bolts[1].parallelism",
        "exceeds tasks",
    );
}

#[test]
fn no_spouts() {
    expect_error(|s| s.spouts.clear(), "spec.spouts", "at least one spout");
}

#[test]
fn unknown_component_and_wrong_kind() {
    expect_error(
        |s| s.bolts[0].component = Some("SplitSentences".into()),
        "spec.bolts[0].component",
        "SplitSentences",
    );
    expect_error(
        |s| s.spouts[0].component = Some("WordCount".into()),
        "spec.spouts[0].component",
        "bolt",
    );
}

#[test]
fn reserved_ids() {
    expect_error(
        |s| s.bolts[0].id = "__acker".into(),
        "spec.bolts[0].id",
        "reserved",
    );
}

#[test]
fn without_a_catalog_only_the_graph_is_checked() {
    let mut s = spec();
    s.bolts[0].component = Some("Whatever".into());
    validate(&s, None).expect("component names need the catalog");
}

#[test]
fn broken_yaml_is_an_error_not_a_panic() {
    assert!(TopologySpec::from_manifest("spouts: [").is_err());
    assert!(TopologySpec::from_manifest("kind: Topology\nspec: {spouts: 3}").is_err());
    let err = TopologySpec::from_manifest("spouts: [{id: a, component: X, parallelism: -1}]")
        .expect_err("negative");
    assert!(err.to_string().contains("parallelism"), "{err}");
}

/// A shell component declares its outputs in the manifest; the graph checks use them
/// as they use a registered component's, and every mistake names its field.
#[test]
fn shell_components_are_checked_like_registered_ones() {
    let shell = |s: &mut TopologySpec| {
        s.bolts[0].component = None;
        s.bolts[0].shell = Some(serde_yaml::from_str("{command: [python3, split.py]}").unwrap());
        s.bolts[0].outputs = BTreeMap::from([("default".to_string(), vec!["word".to_string()])]);
    };
    let mut s = spec();
    shell(&mut s);
    assert_eq!(s.bolts[0].shell.as_ref().unwrap().timeout_seconds, 30);
    validate(&s, Some(&catalog())).unwrap();
    validate(&s, None).unwrap();

    expect_error(
        |s| {
            shell(s);
            s.bolts[0]
                .outputs
                .insert("default".into(), vec!["token".into()]);
        },
        "spec.streams[1].grouping.fields[0]",
        "no field 'word'",
    );
    expect_error(
        |s| {
            shell(s);
            s.bolts[0].component = Some("SplitSentence".into());
        },
        "spec.bolts[0]",
        "exactly one of 'component' and 'shell'",
    );
    expect_error(
        |s| s.bolts[0].component = None,
        "spec.bolts[0].component",
        "missing",
    );
    expect_error(
        |s| {
            shell(s);
            s.bolts[0].shell.as_mut().unwrap().command.clear();
        },
        "spec.bolts[0].shell.command",
        "must name a program",
    );
    expect_error(
        |s| {
            s.bolts[0]
                .outputs
                .insert("default".into(), vec!["w".into()]);
        },
        "spec.bolts[0].outputs",
        "declares its own outputs",
    );
    expect_error(
        |s| {
            shell(s);
            s.bolts[0]
                .outputs
                .insert("x".into(), vec!["a".into(), "a".into()]);
        },
        "spec.bolts[0].outputs.x[1]",
        "duplicate field 'a'",
    );
}

#[test]
fn plans_over_the_limits_are_refused() {
    use squall_api::validate::limits;
    expect_error(|s| s.workers = 100_000, "spec.workers", "more than 1024");
    expect_error(|s| s.ackers = Some(5000), "spec.ackers", "more than 1024");
    expect_error(
        |s| s.spouts[0].tasks = Some(1_000_000),
        "spec.spouts[0].tasks",
        "more than 65536",
    );
    expect_error(
        |s| s.bolts[0].parallelism = limits::MAX_PARALLELISM + 1,
        "spec.bolts[0].parallelism",
        "more than 4096",
    );
    // Within each component's bounds, too many in all.
    expect_error(
        |s| {
            for c in s.bolts.iter_mut() {
                c.tasks = Some(limits::MAX_TASKS);
                c.parallelism = 1;
            }
        },
        "spec",
        "tasks in all",
    );
    // Too many threads for one worker; more workers fix it.
    expect_error(
        |s| {
            s.workers = 1;
            s.bolts[0].parallelism = 1100;
        },
        "spec.workers",
        "per worker",
    );
    let mut ok = spec();
    ok.bolts[0].parallelism = 1100;
    ok.workers = 2;
    validate(&ok, Some(&catalog())).expect("two workers hold 1100 executors");
}

#[test]
fn a_plan_that_cannot_fit_the_workers_memory_limit_is_refused() {
    use squall_api::topology::WorkerTemplate;
    fn with_memory(s: &mut TopologySpec, limit: &str) {
        let yaml = format!("resources: {{limits: {{memory: '{limit}'}}}}");
        s.worker = Some(serde_yaml::from_str::<WorkerTemplate>(&yaml).unwrap());
    }
    const FIELD: &str = "spec.worker.resources.limits.memory";
    // Word count's 8 executors over 2 workers fit in 256 MiB.
    let mut ok = spec();
    with_memory(&mut ok, "256Mi");
    validate(&ok, Some(&catalog())).expect("fits");
    // 400 executors on one worker do not: each full queue is 8,192 tuples.
    expect_error(
        |s| {
            s.workers = 1;
            s.bolts[0].parallelism = 400;
            with_memory(s, "256Mi");
        },
        FIELD,
        "256Mi is less than the",
    );
    // The same plan over more workers fits.
    let mut spread = spec();
    spread.workers = 8;
    spread.bolts[0].parallelism = 400;
    with_memory(&mut spread, "256Mi");
    validate(&spread, Some(&catalog())).expect("fits over 8 workers");
    // Open trees count too: a huge maxSpoutPending on a small limit.
    expect_error(
        |s| {
            s.max_spout_pending = 20_000_000;
            with_memory(s, "1Gi");
        },
        FIELD,
        "open tuple trees",
    );
    expect_error(|s| with_memory(s, "lots"), FIELD, "not a quantity");
}
