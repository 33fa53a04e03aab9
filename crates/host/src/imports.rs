//! The hand-written side of `theater:simple/store` and `theater:simple/runtime`:
//! each call checks access and limits, then becomes one core call, bounded
//! by the actor's deadline. Failures are [`HostError`]s until the `?` that
//! returns them, which turns each into the message the guest receives; it
//! names the store, label or ref. Nothing here traps the guest.
//!
//! Every store call is recorded in the actor's event chain, when it has
//! one: [`TheaterCtx::begin`] names the call, [`TheaterCtx::end`] records how
//! it ended (a write records its event in its own transaction).

use theater_store::{ContentRef, Event};

use crate::bindings::theater::simple::{runtime, store, types};
use crate::ctx::TheaterCtx;
use crate::error::HostError;
use crate::policy::Access;

type WitRef = store::ContentRef;

fn to_core(content_ref: WitRef) -> ContentRef {
    ContentRef::new(content_ref.hash)
}

fn to_wit(content_ref: ContentRef) -> WitRef {
    WitRef {
        hash: content_ref.hash().to_owned(),
    }
}

impl TheaterCtx {
    /// `store` and `store-at-label`: admit (reserving the actor's budget),
    /// write through the admitted handle (the store quota is checked in
    /// the write's transaction), then charge what the write added.
    pub(crate) async fn write(
        &mut self,
        store_id: &str,
        content: Vec<u8>,
        label: Option<&str>,
    ) -> Result<WitRef, HostError> {
        if let Some(label) = label {
            theater_store::validate_label(label)?;
        }
        let store = self.open(store_id, Access::ReadWrite)?;
        let admitted = self.admit(&store, &[&content], label.as_slice()).await?;
        let stored = self
            .within_deadline(admitted.store.write(content, label))
            .await;
        self.settle(admitted);
        Ok(to_wit(stored?.content_ref))
    }

    /// `label` and `replace-at-label`.
    async fn set_label(
        &mut self,
        store_id: &str,
        label: &str,
        content_ref: WitRef,
    ) -> Result<(), HostError> {
        theater_store::validate_label(label)?;
        let store = self.open(store_id, Access::ReadWrite)?;
        let admitted = self.admit(&store, &[], &[label]).await?;
        let content_ref = to_core(content_ref);
        let labelled = self
            .within_deadline(admitted.store.label(label, &content_ref))
            .await;
        self.settle(admitted);
        labelled
    }
}

/// The event of a call named `kind` on store `store_id`.
pub(crate) fn call(kind: &str, store_id: &str) -> Event {
    Event {
        store: Some(store_id.to_owned()),
        ..Event::new(kind)
    }
}

/// The same, naming a label.
pub(crate) fn call_at(kind: &str, store_id: &str, label: &str) -> Event {
    Event {
        label: Some(label.to_owned()),
        ..call(kind, store_id)
    }
}

/// The same, naming refs.
pub(crate) fn call_with_refs(
    kind: &str,
    store_id: &str,
    label: Option<&str>,
    refs: &[&WitRef],
) -> Event {
    Event {
        label: label.map(str::to_owned),
        refs: refs.iter().map(|r| r.hash.clone()).collect(),
        ..call(kind, store_id)
    }
}

impl TheaterCtx {
    async fn get_content(
        &mut self,
        store_id: &str,
        content_ref: WitRef,
    ) -> Result<Vec<u8>, HostError> {
        let store = self.open(store_id, Access::ReadOnly)?;
        let content_ref = to_core(content_ref);
        let content = self.read_within_limits(&store, &content_ref).await?;
        self.note(|event| event.size = Some(content.len() as u64));
        Ok(content)
    }

    async fn list_label_names(&mut self, store_id: &str) -> Result<Vec<String>, HostError> {
        let store = self.open(store_id, Access::ReadOnly)?;
        // One entry more than allowed tells a store that is too large
        // without reading all of it.
        let limit = self.limits().max_list_entries.saturating_add(1);
        let page = self
            .within_deadline(store.list_labels_page("", None, limit))
            .await?;
        let bytes = page.iter().map(|entry| entry.label.len()).sum();
        self.admit_listing(&store, page.len(), bytes, "labels")?;
        Ok(page.into_iter().map(|entry| entry.label).collect())
    }

    async fn list_refs(&mut self, store_id: &str) -> Result<Vec<WitRef>, HostError> {
        let store = self.open(store_id, Access::ReadOnly)?;
        let stats = self.within_deadline(store.stats()).await?;
        let objects = usize::try_from(stats.objects).unwrap_or(usize::MAX);
        self.admit_listing(&store, objects, objects.saturating_mul(64), "objects")?;
        let refs = self.within_deadline(store.list_all_content()).await?;
        Ok(refs.into_iter().map(to_wit).collect())
    }
}

impl store::Host for TheaterCtx {
    async fn new(&mut self) -> Result<String, String> {
        self.begin("new", Event::new);
        let created = self.create_store().await;
        if let Ok(id) = &created {
            self.note(|event| event.store = Some(id.clone()));
        }
        Ok(self.end(created).await?)
    }

    async fn store(&mut self, store_id: String, content: Vec<u8>) -> Result<WitRef, String> {
        self.begin("store", |op| call(op, &store_id));
        let result = self.write(&store_id, content, None).await;
        Ok(self.end(result).await?)
    }

    async fn get(&mut self, store_id: String, content_ref: WitRef) -> Result<Vec<u8>, String> {
        self.begin("get", |op| {
            call_with_refs(op, &store_id, None, &[&content_ref])
        });
        let result = self.get_content(&store_id, content_ref).await;
        Ok(self.end(result).await?)
    }

    async fn exists(&mut self, store_id: String, content_ref: WitRef) -> Result<bool, String> {
        self.begin("exists", |op| {
            call_with_refs(op, &store_id, None, &[&content_ref])
        });
        let result = async {
            let store = self.open(&store_id, Access::ReadOnly)?;
            let content_ref = to_core(content_ref);
            self.within_deadline(store.exists(&content_ref)).await
        }
        .await;
        Ok(self.end(result).await?)
    }

    async fn label(
        &mut self,
        store_id: String,
        label: String,
        content_ref: WitRef,
    ) -> Result<(), String> {
        self.begin("label", |op| {
            call_with_refs(op, &store_id, Some(&label), &[&content_ref])
        });
        let result = self.set_label(&store_id, &label, content_ref).await;
        Ok(self.end(result).await?)
    }

    async fn get_by_label(
        &mut self,
        store_id: String,
        label: String,
    ) -> Result<Option<WitRef>, String> {
        self.begin("get-by-label", |op| call_at(op, &store_id, &label));
        let result = async {
            let store = self.open(&store_id, Access::ReadOnly)?;
            self.within_deadline(store.get_by_label(&label)).await
        }
        .await;
        if let Ok(Some(target)) = &result {
            self.note(|event| event.refs.push(target.hash().to_owned()));
        }
        Ok(self.end(result).await?.map(to_wit))
    }

    async fn remove_label(&mut self, store_id: String, label: String) -> Result<(), String> {
        self.begin("remove-label", |op| call_at(op, &store_id, &label));
        let result = async {
            let store = self.open(&store_id, Access::ReadWrite)?;
            self.within_deadline(store.remove_label(&label)).await
        }
        .await;
        Ok(self.end(result).await?)
    }

    async fn remove_from_label(
        &mut self,
        store_id: String,
        label: String,
        content_ref: WitRef,
    ) -> Result<(), String> {
        self.begin("remove-from-label", |op| {
            call_with_refs(op, &store_id, Some(&label), &[&content_ref])
        });
        let result = async {
            let store = self.open(&store_id, Access::ReadWrite)?;
            let content_ref = to_core(content_ref);
            self.within_deadline(store.remove_from_label(&label, &content_ref))
                .await
        }
        .await;
        self.end(result).await?;
        Ok(())
    }

    async fn store_at_label(
        &mut self,
        store_id: String,
        label: String,
        content: Vec<u8>,
    ) -> Result<WitRef, String> {
        self.begin("store-at-label", |op| call_at(op, &store_id, &label));
        let result = self.write(&store_id, content, Some(&label)).await;
        Ok(self.end(result).await?)
    }

    async fn replace_content_at_label(
        &mut self,
        store_id: String,
        label: String,
        content: Vec<u8>,
    ) -> Result<WitRef, String> {
        self.begin("replace-content-at-label", |op| {
            call_at(op, &store_id, &label)
        });
        let result = self.write(&store_id, content, Some(&label)).await;
        Ok(self.end(result).await?)
    }

    async fn replace_at_label(
        &mut self,
        store_id: String,
        label: String,
        content_ref: WitRef,
    ) -> Result<(), String> {
        self.begin("replace-at-label", |op| {
            call_with_refs(op, &store_id, Some(&label), &[&content_ref])
        });
        let result = self.set_label(&store_id, &label, content_ref).await;
        Ok(self.end(result).await?)
    }

    async fn list_labels(&mut self, store_id: String) -> Result<Vec<String>, String> {
        self.begin("list-labels", |op| call(op, &store_id));
        let result = self.list_label_names(&store_id).await;
        Ok(self.end(result).await?)
    }

    async fn list_all_content(&mut self, store_id: String) -> Result<Vec<WitRef>, String> {
        self.begin("list-all-content", |op| call(op, &store_id));
        let result = self.list_refs(&store_id).await;
        Ok(self.end(result).await?)
    }

    async fn calculate_total_size(&mut self, store_id: String) -> Result<u64, String> {
        self.begin("calculate-total-size", |op| call(op, &store_id));
        let result = async {
            let store = self.open(&store_id, Access::ReadOnly)?;
            self.within_deadline(store.calculate_total_size()).await
        }
        .await;
        Ok(self.end(result).await?)
    }
}

impl types::Host for TheaterCtx {}

impl runtime::Host for TheaterCtx {
    async fn log(&mut self, msg: String) {
        self.record_log(msg);
    }

    async fn shutdown(&mut self, data: Option<Vec<u8>>) -> Result<(), String> {
        self.record_shutdown(data);
        Ok(())
    }

    async fn get_chain(&mut self) -> types::Chain {
        types::Chain {
            events: self.chain_events().await,
        }
    }
}
