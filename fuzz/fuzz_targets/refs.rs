//! Ref parsing: never panics; accepts exactly 64 lowercase hex digits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use theater_store::ContentRef;

fuzz_target!(|text: &str| {
    let well_formed =
        text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    match ContentRef::parse(text) {
        Ok(content_ref) => {
            assert!(well_formed, "accepted {text:?}");
            assert_eq!(content_ref.hash(), text);
        }
        Err(error) => {
            assert!(!well_formed, "refused {text:?}: {error}");
            assert!(error.to_string().len() < 300, "error message not shortened");
        }
    }
});
