//! An actor built from an unmodified copy of Theater's WIT links and runs.

use theater_store_examples::THEATER_COMPAT;
use theater_store_host::RunOptions;

use crate::{Harness, fields};

#[tokio::test]
async fn a_theater_actor_runs_unchanged() {
    let h = Harness::start();
    let actor = h.load(THEATER_COMPAT);
    let run = h
        .host
        .run_init(&actor, RunOptions::default(), None, "hello")
        .await;
    let state = run
        .outcome
        .unwrap_or_else(|e| panic!("{e}\n{}", run.stderr))
        .unwrap();
    let fields = fields(state);
    assert_eq!(fields["latest"], "third");
    assert_eq!(fields["latest_is_replaced"], "true");
    assert_eq!(fields["second_exists"], "true");
    assert_eq!(fields["labels"], "doc:first,doc:latest");
    assert_eq!(fields["objects"], "3");
    assert_eq!(fields["size"], "16");
    assert_eq!(run.created_stores, [fields["store"].clone()]);
    assert_eq!(
        run.logs,
        ["compat actor started with \"hello\", previous state: false"]
    );

    let store = h.root().store(&fields["store"]).unwrap();
    assert_eq!(
        store
            .get_content_by_label("doc:latest")
            .await
            .unwrap()
            .unwrap(),
        b"third"
    );
}
