//! A Theater-style actor, using the raw bindings of Theater's WIT the way
//! Theater actors do: every store function once, results in the new state
//! as `key=value` lines.

wit_bindgen::generate!({ path: "wit", world: "theater-actor" });

use exports::theater::simple::actor::Guest;
use theater::simple::runtime::log;
use theater::simple::store::{self, ContentRef};

struct Compat;

impl Guest for Compat {
    fn init(state: Option<Vec<u8>>, (param,): (String,)) -> Result<(Option<Vec<u8>>,), String> {
        let id = store::new()?;
        log(&format!(
            "compat actor started with {param:?}, previous state: {}",
            state.is_some()
        ));
        let first = store::store(&id, b"first")?;
        let second = store::store_at_label(&id, "doc:latest", b"second")?;
        store::label(&id, "doc:first", &first)?;
        store::replace_at_label(&id, "doc:latest", &first)?;
        let replaced = store::replace_content_at_label(&id, "doc:latest", b"third")?;
        store::remove_from_label(&id, "doc:first", &second)?;
        store::remove_label(&id, "missing-is-fine")?;
        let latest = store::get_by_label(&id, "doc:latest")?.ok_or("doc:latest vanished")?;
        let body = store::get(&id, &latest)?;
        let exists = store::exists(
            &id,
            &ContentRef {
                hash: second.hash.clone(),
            },
        )?;
        let lines = [
            format!("store={id}"),
            format!("latest={}", String::from_utf8_lossy(&body)),
            format!("latest_is_replaced={}", latest.hash == replaced.hash),
            format!("second_exists={exists}"),
            format!("labels={}", store::list_labels(&id)?.join(",")),
            format!("objects={}", store::list_all_content(&id)?.len()),
            format!("size={}", store::calculate_total_size(&id)?),
        ];
        Ok((Some(lines.join("\n").into_bytes()),))
    }
}

export!(Compat);
