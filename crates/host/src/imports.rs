//! The hand-written side of `theater:simple/store` and `theater:simple/runtime`:
//! each call checks access and limits, then becomes one core call, bounded
//! by the actor's deadline. Errors reach the guest as the core's messages,
//! which name the store, label or ref; nothing here traps the guest.

use theater_store::{ContentRef, LabelEntry};

use crate::bindings::theater::simple::{runtime, store};
use crate::ctx::{StoreCtx, message};
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

impl StoreCtx {
    /// `store` and `store-at-label`: admit, write, then charge the actor
    /// for what the write added.
    async fn write(
        &mut self,
        store_id: String,
        content: Vec<u8>,
        label: Option<String>,
    ) -> Result<WitRef, String> {
        let store = self.open(&store_id, Access::ReadWrite)?;
        let cost = self.admit(&store, Some(&content), label.as_deref()).await?;
        let written = self.within_deadline(async {
            store
                .write(content, label.as_deref())
                .await
                .map_err(message)
        });
        let stored = written.await?;
        self.charge(cost, stored.new);
        Ok(to_wit(stored.content_ref))
    }
}

impl store::Host for StoreCtx {
    async fn new(&mut self) -> Result<String, String> {
        self.create_store().await
    }

    async fn store(&mut self, store_id: String, content: Vec<u8>) -> Result<WitRef, String> {
        self.write(store_id, content, None).await
    }

    async fn get(&mut self, store_id: String, content_ref: WitRef) -> Result<Vec<u8>, String> {
        let store = self.open(&store_id, Access::ReadOnly)?;
        let content_ref = to_core(content_ref);
        self.admit_read(&store, &content_ref).await?;
        self.within_deadline(async { store.get(&content_ref).await.map_err(message) })
            .await
    }

    async fn exists(&mut self, store_id: String, content_ref: WitRef) -> Result<bool, String> {
        let store = self.open(&store_id, Access::ReadOnly)?;
        let content_ref = to_core(content_ref);
        self.within_deadline(async { store.exists(&content_ref).await.map_err(message) })
            .await
    }

    async fn label(
        &mut self,
        store_id: String,
        label: String,
        content_ref: WitRef,
    ) -> Result<(), String> {
        theater_store::validate_label(&label).map_err(message)?;
        let store = self.open(&store_id, Access::ReadWrite)?;
        let cost = self.admit(&store, None, Some(&label)).await?;
        let content_ref = to_core(content_ref);
        self.within_deadline(async { store.label(&label, &content_ref).await.map_err(message) })
            .await?;
        self.charge(cost, false);
        Ok(())
    }

    async fn get_by_label(
        &mut self,
        store_id: String,
        label: String,
    ) -> Result<Option<WitRef>, String> {
        let store = self.open(&store_id, Access::ReadOnly)?;
        let target = self
            .within_deadline(async { store.get_by_label(&label).await.map_err(message) })
            .await?;
        Ok(target.map(to_wit))
    }

    async fn remove_label(&mut self, store_id: String, label: String) -> Result<(), String> {
        let store = self.open(&store_id, Access::ReadWrite)?;
        self.within_deadline(async { store.remove_label(&label).await.map_err(message) })
            .await
    }

    async fn remove_from_label(
        &mut self,
        store_id: String,
        label: String,
        content_ref: WitRef,
    ) -> Result<(), String> {
        let store = self.open(&store_id, Access::ReadWrite)?;
        let content_ref = to_core(content_ref);
        let removed = self.within_deadline(async {
            store
                .remove_from_label(&label, &content_ref)
                .await
                .map_err(message)
        });
        removed.await.map(drop)
    }

    async fn store_at_label(
        &mut self,
        store_id: String,
        label: String,
        content: Vec<u8>,
    ) -> Result<WitRef, String> {
        theater_store::validate_label(&label).map_err(message)?;
        let store = self.open(&store_id, Access::ReadWrite)?;
        self.admit(&store, Some(&content), Some(&label)).await?;
        let stored = self.within_deadline(async {
            store.store_at_label(&label, content).await.map_err(message)
        });
        stored.await.map(to_wit)
    }

    async fn replace_content_at_label(
        &mut self,
        store_id: String,
        label: String,
        content: Vec<u8>,
    ) -> Result<WitRef, String> {
        self.store_at_label(store_id, label, content).await
    }

    async fn replace_at_label(
        &mut self,
        store_id: String,
        label: String,
        content_ref: WitRef,
    ) -> Result<(), String> {
        self.label(store_id, label, content_ref).await
    }

    async fn list_labels(&mut self, store_id: String) -> Result<Vec<String>, String> {
        let store = self.open(&store_id, Access::ReadOnly)?;
        // One entry more than allowed tells a store that is too large
        // without reading all of it.
        let limit = self.limits().max_list_entries.saturating_add(1);
        let page = self
            .within_deadline(async {
                store
                    .list_labels_page("", None, limit)
                    .await
                    .map_err(message)
            })
            .await?;
        let bytes = page.iter().map(|entry| entry.label.len()).sum();
        self.admit_listing(&store, page.len(), bytes, "labels")?;
        Ok(page
            .into_iter()
            .map(|entry: LabelEntry| entry.label)
            .collect())
    }

    async fn list_all_content(&mut self, store_id: String) -> Result<Vec<WitRef>, String> {
        let store = self.open(&store_id, Access::ReadOnly)?;
        let stats = self
            .within_deadline(async { store.stats().await.map_err(message) })
            .await?;
        let objects = usize::try_from(stats.objects).unwrap_or(usize::MAX);
        self.admit_listing(&store, objects, objects.saturating_mul(64), "objects")?;
        let refs = self
            .within_deadline(async { store.list_all_content().await.map_err(message) })
            .await?;
        Ok(refs.into_iter().map(to_wit).collect())
    }

    async fn calculate_total_size(&mut self, store_id: String) -> Result<u64, String> {
        let store = self.open(&store_id, Access::ReadOnly)?;
        self.within_deadline(async { store.calculate_total_size().await.map_err(message) })
            .await
    }
}

impl runtime::Host for StoreCtx {
    async fn log(&mut self, msg: String) {
        self.record_log(msg);
    }

    async fn shutdown(&mut self, data: Option<Vec<u8>>) -> Result<(), String> {
        self.record_shutdown(data);
        Ok(())
    }
}
