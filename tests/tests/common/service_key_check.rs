//! Property of the `service_key` fuzz target, shared with the corpus replay
//! in `tests/tests/fuzz_corpus.rs`: `ServiceKey::decode` never panics, and
//! every key it accepts encodes to a one-line text that decodes to the same
//! key (so what `ferry service key` prints is what `service create` reads).

use crate::service_key::ServiceKey;

/// Checks one input (non-UTF-8 bytes are read lossily).
pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(key) = ServiceKey::decode(&text) else {
        return;
    };
    let encoded = key.encode();
    assert!(
        !encoded.contains(char::is_whitespace),
        "an encoded key is one word: {encoded:?}"
    );
    assert_eq!(
        ServiceKey::decode(&encoded).as_ref(),
        Ok(&key),
        "re-encoding changed the key"
    );
}
