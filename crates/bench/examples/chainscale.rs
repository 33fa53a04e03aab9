use std::time::Instant;
use theater_store::{Durability, Event, StoreRoot};

fn main() {
    let path = std::env::args().nth(1).unwrap();
    let n: usize = std::env::args()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let root = StoreRoot::with_durability(&path, Durability::Buffered);
    rt.block_on(async {
        let chain = root.event_chain("busy-actor").unwrap();
        let t = Instant::now();
        for i in 0..n {
            let mut e = Event::new("store-at-label");
            e.store = Some("docs".into());
            e.label = Some(format!("item/{i}"));
            chain.append(e).await.unwrap();
        }
        eprintln!(
            "appended {n} in {:?} ({:.1} µs each)",
            t.elapsed(),
            t.elapsed().as_secs_f64() * 1e6 / n as f64
        );
        let t = Instant::now();
        let r = chain.verify().await.unwrap();
        eprintln!("verify {:?} intact={}", t.elapsed(), r.is_intact());
        let t = Instant::now();
        let ev = chain.events(10).await.unwrap();
        eprintln!("events(10) {:?} ({} entries)", t.elapsed(), ev.len());
    });
}
