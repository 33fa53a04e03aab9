//! The hand-written side of `theater:simple/store` and `theater:simple/runtime`:
//! each call checks access and limits, then becomes one core call. Errors
//! reach the guest as the core's messages, which name the store, label or
//! ref; nothing here traps the guest.

use theater_store::{ContentRef, ContentStore, StoreError};

use crate::bindings::theater::simple::{runtime, store};
use crate::ctx::StoreCtx;
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

fn message(error: StoreError) -> String {
    error.to_string()
}

impl StoreCtx {
    async fn write_content(
        &mut self,
        store_id: &str,
        content: &[u8],
    ) -> Result<ContentStore, String> {
        let store = self.open(store_id, Access::ReadWrite)?;
        self.admit(&store, content).await?;
        Ok(store)
    }
}

impl store::Host for StoreCtx {
    async fn new(&mut self) -> Result<String, String> {
        self.create_store().await
    }

    async fn store(&mut self, store_id: String, content: Vec<u8>) -> Result<WitRef, String> {
        let store = self.write_content(&store_id, &content).await?;
        store.store(content).await.map(to_wit).map_err(message)
    }

    async fn get(&mut self, store_id: String, content_ref: WitRef) -> Result<Vec<u8>, String> {
        let store = self.open(&store_id, Access::ReadOnly)?;
        store.get(&to_core(content_ref)).await.map_err(message)
    }

    async fn exists(&mut self, store_id: String, content_ref: WitRef) -> Result<bool, String> {
        let store = self.open(&store_id, Access::ReadOnly)?;
        store.exists(&to_core(content_ref)).await.map_err(message)
    }

    async fn label(
        &mut self,
        store_id: String,
        label: String,
        content_ref: WitRef,
    ) -> Result<(), String> {
        let store = self.open(&store_id, Access::ReadWrite)?;
        store
            .label(&label, &to_core(content_ref))
            .await
            .map_err(message)
    }

    async fn get_by_label(
        &mut self,
        store_id: String,
        label: String,
    ) -> Result<Option<WitRef>, String> {
        let store = self.open(&store_id, Access::ReadOnly)?;
        let target = store.get_by_label(&label).await.map_err(message)?;
        Ok(target.map(to_wit))
    }

    async fn remove_label(&mut self, store_id: String, label: String) -> Result<(), String> {
        let store = self.open(&store_id, Access::ReadWrite)?;
        store.remove_label(&label).await.map_err(message)
    }

    async fn remove_from_label(
        &mut self,
        store_id: String,
        label: String,
        content_ref: WitRef,
    ) -> Result<(), String> {
        let store = self.open(&store_id, Access::ReadWrite)?;
        store
            .remove_from_label(&label, &to_core(content_ref))
            .await
            .map(drop)
            .map_err(message)
    }

    async fn store_at_label(
        &mut self,
        store_id: String,
        label: String,
        content: Vec<u8>,
    ) -> Result<WitRef, String> {
        theater_store::validate_label(&label).map_err(message)?;
        let store = self.write_content(&store_id, &content).await?;
        store
            .store_at_label(&label, content)
            .await
            .map(to_wit)
            .map_err(message)
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
        store.list_labels().await.map_err(message)
    }

    async fn list_all_content(&mut self, store_id: String) -> Result<Vec<WitRef>, String> {
        let store = self.open(&store_id, Access::ReadOnly)?;
        let refs = store.list_all_content().await.map_err(message)?;
        Ok(refs.into_iter().map(to_wit).collect())
    }

    async fn calculate_total_size(&mut self, store_id: String) -> Result<u64, String> {
        let store = self.open(&store_id, Access::ReadOnly)?;
        store.calculate_total_size().await.map_err(message)
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
