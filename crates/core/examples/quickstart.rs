//! Stores a document in two versions in the default root, then prints what is
//! stored where. Run with `cargo run -p theater-store --example quickstart`.

use theater_store::{ContentStore, StoreRoot};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = StoreRoot::global();
    let store = ContentStore::from_id("quickstart")?;
    let v1 = store
        .store_at_label("document:v1", "Version 1 content")
        .await?;
    let v2 = store
        .store_at_label("document:v2", "Version 2 content")
        .await?;
    store.replace_at_label("document:latest", &v2).await?;

    println!(
        "root:  {}",
        root.path().map_or("?".into(), |p| p.display().to_string())
    );
    println!("store: {}", store.id());
    for label in store.list_labels().await? {
        let target = store.get_by_label(&label).await?.expect("just listed");
        println!("  {label:<16} -> {target}");
    }
    let latest = store
        .get_content_by_label("document:latest")
        .await?
        .unwrap_or_default();
    println!(
        "latest: {:?} (v1 is {v1})",
        String::from_utf8_lossy(&latest)
    );
    println!("total size: {} bytes", store.calculate_total_size().await?);
    Ok(())
}
