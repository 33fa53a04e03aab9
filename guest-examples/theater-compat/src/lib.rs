//! A Theater-style actor, using the raw bindings of Theater's WIT the way
//! Theater actors do: every store function once, results in the new state
//! as `key=value` lines.

wit_bindgen::generate!({ path: "wit", world: "theater-actor" });

use exports::theater::simple::actor::Guest;
use theater::simple::runtime::{get_chain, log};
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
        // The chain as Theater gives it: every store call above, in order,
        // each linked to the one before by its hash.
        let chain = get_chain();
        let linked = chain
            .events
            .windows(2)
            .all(|pair| pair[1].event.parent == Some(pair[0].hash));
        let types: Vec<&str> = chain
            .events
            .iter()
            .map(|meta| meta.event.event_type.as_str())
            .collect();
        let lines = lines.into_iter().chain([
            format!("chain_linked={linked}"),
            format!("chain_types={}", types.join(",")),
            format!(
                "chain_last_data={}",
                chain
                    .events
                    .last()
                    .map(|meta| String::from_utf8_lossy(&meta.event.data).into_owned())
                    .unwrap_or_default()
            ),
        ]);
        Ok((Some(lines.collect::<Vec<_>>().join("\n").into_bytes()),))
    }
}

export!(Compat);
