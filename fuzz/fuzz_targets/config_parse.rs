//! Config parsing: any text either loads or is refused with an error naming a line and a
//! column inside the text; it never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use vmwarden::config::{Config, ConfigError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(ConfigError::Invalid { line, column, .. }) =
        Config::parse(text, Path::new("/etc/vmwarden/config.toml"))
    {
        assert!(line >= 1 && column >= 1);
        assert!(line <= text.lines().count().max(1) + 1, "line {line} past the end");
    }
});
