//! URI helpers on arbitrary text: split/decode never panics, and
//! encode → split round-trips the decoded values.
#![no_main]

use coap_codec::uri;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        let _ = uri::percent_decode(data);
        return;
    };
    let entries: Vec<Vec<u8>> = uri::split_query(text)
        .filter_map(Result::ok)
        .map(|c| c.into_owned())
        .collect();
    for e in &entries {
        let p = uri::split_query_param(e);
        assert!(p.key.len() + p.value.map_or(0, |v| v.len() + 1) == e.len());
    }
    let encoded = uri::join_query_encoded(entries.iter().map(|e| &e[..]));
    let back: Vec<Vec<u8>> = uri::split_query(&encoded)
        .map(|r| r.unwrap().into_owned())
        .collect();
    // Joining drops nothing; an all-empty list joins to "" which splits to none.
    if !(entries.len() == 1 && entries[0].is_empty()) {
        assert_eq!(back, entries);
    }
    let segs: Vec<Vec<u8>> = uri::split_path(text)
        .filter_map(Result::ok)
        .map(|c| c.into_owned())
        .collect();
    let path = uri::join_path_encoded(segs.iter().map(|s| &s[..]));
    let back: Vec<Vec<u8>> = uri::split_path(&path)
        .map(|r| r.unwrap().into_owned())
        .collect();
    if !(segs.len() == 1 && segs[0].is_empty()) {
        assert_eq!(back, segs);
    }
});
