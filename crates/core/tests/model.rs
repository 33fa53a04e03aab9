//! Random operation sequences against the real store and an in-memory model;
//! every result must agree.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use theater_store::{ContentRef, StoreError};

mod common;

use common::{CONTENTS, LABELS};

#[derive(Clone, Debug)]
enum Op {
    Store(usize),
    StoreAtLabel(usize, usize),
    Label(usize, usize),
    RemoveLabel(usize),
    RemoveFromLabel(usize, usize),
    Cas(usize, Option<usize>, Option<usize>),
    GetByLabel(usize),
    Get(usize),
    Exists(usize),
    ListLabels,
    ListContent,
    TotalSize,
}

fn op() -> impl Strategy<Value = Op> {
    let content = 0..CONTENTS.len();
    let label = 0..LABELS.len();
    prop_oneof![
        content.clone().prop_map(Op::Store),
        (label.clone(), content.clone()).prop_map(|(l, c)| Op::StoreAtLabel(l, c)),
        (label.clone(), content.clone()).prop_map(|(l, c)| Op::Label(l, c)),
        label.clone().prop_map(Op::RemoveLabel),
        (label.clone(), content.clone()).prop_map(|(l, c)| Op::RemoveFromLabel(l, c)),
        (
            label.clone(),
            proptest::option::of(content.clone()),
            proptest::option::of(content.clone())
        )
            .prop_map(|(l, e, n)| Op::Cas(l, e, n)),
        label.prop_map(Op::GetByLabel),
        content.clone().prop_map(Op::Get),
        content.prop_map(Op::Exists),
        Just(Op::ListLabels),
        Just(Op::ListContent),
        Just(Op::TotalSize),
    ]
}

#[derive(Default)]
struct Model {
    objects: BTreeSet<usize>,
    labels: BTreeMap<&'static str, usize>,
}

fn reference(content: usize) -> ContentRef {
    ContentRef::for_content(CONTENTS[content])
}

/// Outcome of one op, comparable between model and store.
#[derive(Debug, PartialEq)]
enum Outcome {
    Done,
    Flag(bool),
    Ref(Option<ContentRef>),
    Bytes(Vec<u8>),
    Names(Vec<String>),
    Refs(Vec<ContentRef>),
    Size(u64),
    NotFound,
}

impl Model {
    fn apply(&mut self, op: &Op) -> Outcome {
        match *op {
            Op::Store(c) => {
                self.objects.insert(c);
                Outcome::Ref(Some(reference(c)))
            }
            Op::StoreAtLabel(l, c) => {
                self.objects.insert(c);
                self.labels.insert(LABELS[l], c);
                Outcome::Ref(Some(reference(c)))
            }
            Op::Label(l, c) => {
                if !self.objects.contains(&c) {
                    return Outcome::NotFound;
                }
                self.labels.insert(LABELS[l], c);
                Outcome::Done
            }
            Op::RemoveLabel(l) => {
                self.labels.remove(LABELS[l]);
                Outcome::Done
            }
            Op::RemoveFromLabel(l, c) => {
                let matches = self.labels.get(LABELS[l]) == Some(&c);
                if matches {
                    self.labels.remove(LABELS[l]);
                }
                Outcome::Flag(matches)
            }
            Op::Cas(l, expected, new) => {
                if new.is_some_and(|n| !self.objects.contains(&n)) {
                    return Outcome::NotFound;
                }
                if self.labels.get(LABELS[l]).copied() != expected {
                    return Outcome::Flag(false);
                }
                match new {
                    Some(n) => self.labels.insert(LABELS[l], n),
                    None => self.labels.remove(LABELS[l]),
                };
                Outcome::Flag(true)
            }
            Op::GetByLabel(l) => Outcome::Ref(self.labels.get(LABELS[l]).map(|&c| reference(c))),
            Op::Get(c) if self.objects.contains(&c) => Outcome::Bytes(CONTENTS[c].to_vec()),
            Op::Get(_) => Outcome::NotFound,
            Op::Exists(c) => Outcome::Flag(self.objects.contains(&c)),
            Op::ListLabels => Outcome::Names(self.labels.keys().map(|l| l.to_string()).collect()),
            Op::ListContent => {
                let mut refs: Vec<ContentRef> =
                    self.objects.iter().map(|&c| reference(c)).collect();
                refs.sort();
                Outcome::Refs(refs)
            }
            Op::TotalSize => {
                Outcome::Size(self.objects.iter().map(|&c| CONTENTS[c].len() as u64).sum())
            }
        }
    }
}

async fn run_on_store(store: &theater_store::ContentStore, op: &Op) -> Outcome {
    let result = match *op {
        Op::Store(c) => store
            .store(CONTENTS[c])
            .await
            .map(|r| Outcome::Ref(Some(r))),
        Op::StoreAtLabel(l, c) => store
            .store_at_label(LABELS[l], CONTENTS[c])
            .await
            .map(|r| Outcome::Ref(Some(r))),
        Op::Label(l, c) => store
            .label(LABELS[l], &reference(c))
            .await
            .map(|()| Outcome::Done),
        Op::RemoveLabel(l) => store.remove_label(LABELS[l]).await.map(|()| Outcome::Done),
        Op::RemoveFromLabel(l, c) => store
            .remove_from_label(LABELS[l], &reference(c))
            .await
            .map(Outcome::Flag),
        Op::Cas(l, expected, new) => {
            let expected = expected.map(reference);
            let new = new.map(reference);
            store
                .compare_and_swap_label(LABELS[l], expected.as_ref(), new.as_ref())
                .await
                .map(Outcome::Flag)
        }
        Op::GetByLabel(l) => store.get_by_label(LABELS[l]).await.map(Outcome::Ref),
        Op::Get(c) => store.get(&reference(c)).await.map(Outcome::Bytes),
        Op::Exists(c) => store.exists(&reference(c)).await.map(Outcome::Flag),
        Op::ListLabels => store.list_labels().await.map(Outcome::Names),
        Op::ListContent => store.list_all_content().await.map(Outcome::Refs),
        Op::TotalSize => store.calculate_total_size().await.map(Outcome::Size),
    };
    match result {
        Ok(outcome) => outcome,
        Err(StoreError::NotFound { .. }) => Outcome::NotFound,
        Err(other) => panic!("{op:?} failed: {other}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn store_agrees_with_model(ops in proptest::collection::vec(op(), 1..60)) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (_dir, root) = common::temp_root();
        let store = root.store("model").unwrap();
        let mut model = Model::default();
        runtime.block_on(async {
            for (step, op) in ops.iter().enumerate() {
                let expected = model.apply(op);
                let actual = run_on_store(&store, op).await;
                prop_assert_eq!(actual, expected, "step {} ({:?})", step, op);
            }
            let stats = store.stats().await.unwrap();
            prop_assert_eq!(stats.labels, model.labels.len() as u64);
            prop_assert_eq!(stats.objects, model.objects.len() as u64);
            Ok(())
        })?;
    }
}
