//! The hand-written side of `theater:simple/store` and `theater:simple/runtime`:
//! each call checks access and limits, then becomes one core call, bounded
//! by the actor's deadline. Failures are [`HostError`]s until the `?` that
//! returns them, which turns each into the message the guest receives; it
//! names the store, label or ref. Nothing here traps the guest.

use theater_store::ContentRef;

use crate::bindings::theater::simple::{runtime, store};
use crate::ctx::StoreCtx;
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

impl StoreCtx {
    /// `store` and `store-at-label`: admit, write, then charge the actor
    /// for what the write added.
    async fn write(
        &mut self,
        store_id: &str,
        content: Vec<u8>,
        label: Option<&str>,
    ) -> Result<WitRef, HostError> {
        if let Some(label) = label {
            theater_store::validate_label(label)?;
        }
        let store = self.open(store_id, Access::ReadWrite)?;
        let cost = self.admit(&store, Some(&content), label).await?;
        let stored = self.within_deadline(store.write(content, label)).await?;
        self.charge(cost, stored.new);
        Ok(to_wit(stored.content_ref))
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
        let cost = self.admit(&store, None, Some(label)).await?;
        let content_ref = to_core(content_ref);
        self.within_deadline(store.label(label, &content_ref))
            .await?;
        self.charge(cost, false);
        Ok(())
    }
}

impl store::Host for StoreCtx {
    async fn new(&mut self) -> Result<String, String> {
        Ok(self.create_store().await?)
    }

    async fn store(&mut self, store_id: String, content: Vec<u8>) -> Result<WitRef, String> {
        Ok(self.write(&store_id, content, None).await?)
    }

    async fn get(&mut self, store_id: String, content_ref: WitRef) -> Result<Vec<u8>, String> {
        let store = self.open(&store_id, Access::ReadOnly)?;
        let content_ref = to_core(content_ref);
        self.admit_read(&store, &content_ref).await?;
        Ok(self.within_deadline(store.get(&content_ref)).await?)
    }

    async fn exists(&mut self, store_id: String, content_ref: WitRef) -> Result<bool, String> {
        let store = self.open(&store_id, Access::ReadOnly)?;
        let content_ref = to_core(content_ref);
        Ok(self.within_deadline(store.exists(&content_ref)).await?)
    }

    async fn label(
        &mut self,
        store_id: String,
        label: String,
        content_ref: WitRef,
    ) -> Result<(), String> {
        Ok(self.set_label(&store_id, &label, content_ref).await?)
    }

    async fn get_by_label(
        &mut self,
        store_id: String,
        label: String,
    ) -> Result<Option<WitRef>, String> {
        let store = self.open(&store_id, Access::ReadOnly)?;
        let target = self.within_deadline(store.get_by_label(&label)).await?;
        Ok(target.map(to_wit))
    }

    async fn remove_label(&mut self, store_id: String, label: String) -> Result<(), String> {
        let store = self.open(&store_id, Access::ReadWrite)?;
        Ok(self.within_deadline(store.remove_label(&label)).await?)
    }

    async fn remove_from_label(
        &mut self,
        store_id: String,
        label: String,
        content_ref: WitRef,
    ) -> Result<(), String> {
        let store = self.open(&store_id, Access::ReadWrite)?;
        let content_ref = to_core(content_ref);
        self.within_deadline(store.remove_from_label(&label, &content_ref))
            .await?;
        Ok(())
    }

    async fn store_at_label(
        &mut self,
        store_id: String,
        label: String,
        content: Vec<u8>,
    ) -> Result<WitRef, String> {
        Ok(self.write(&store_id, content, Some(&label)).await?)
    }

    async fn replace_content_at_label(
        &mut self,
        store_id: String,
        label: String,
        content: Vec<u8>,
    ) -> Result<WitRef, String> {
        Ok(self.write(&store_id, content, Some(&label)).await?)
    }

    async fn replace_at_label(
        &mut self,
        store_id: String,
        label: String,
        content_ref: WitRef,
    ) -> Result<(), String> {
        Ok(self.set_label(&store_id, &label, content_ref).await?)
    }

    async fn list_labels(&mut self, store_id: String) -> Result<Vec<String>, String> {
        let store = self.open(&store_id, Access::ReadOnly)?;
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

    async fn list_all_content(&mut self, store_id: String) -> Result<Vec<WitRef>, String> {
        let store = self.open(&store_id, Access::ReadOnly)?;
        let stats = self.within_deadline(store.stats()).await?;
        let objects = usize::try_from(stats.objects).unwrap_or(usize::MAX);
        self.admit_listing(&store, objects, objects.saturating_mul(64), "objects")?;
        let refs = self.within_deadline(store.list_all_content()).await?;
        Ok(refs.into_iter().map(to_wit).collect())
    }

    async fn calculate_total_size(&mut self, store_id: String) -> Result<u64, String> {
        let store = self.open(&store_id, Access::ReadOnly)?;
        Ok(self.within_deadline(store.calculate_total_size()).await?)
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
