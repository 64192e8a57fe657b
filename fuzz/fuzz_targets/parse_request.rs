//! Request parsing: any request line and body either parses into an operation or is refused
//! with an error; it never panics. Input: `METHOD PATH[?QUERY]\n` then the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmwarden::api::ops::{match_route, parse};

fuzz_target!(|data: &[u8]| {
    let (line, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(line) = std::str::from_utf8(line) else {
        return;
    };
    let Some((method, target)) = line.split_once(' ') else {
        return;
    };
    let Ok(method) = hyper::Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if let Ok((route, params)) = match_route(&method, path) {
        let _ = parse(route, &method, &params, query, body.to_vec());
    }
});
