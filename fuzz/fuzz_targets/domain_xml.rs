//! The domain XML builder: every VM and project name the parser accepts, and any absolute
//! path, gives well-formed XML from which the same name, project and path read back.
//! Input: name, project and a path separated by NUL bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quick_xml::events::Event;
use vmwarden::hypervisor::xml::domain_xml;
use vmwarden::hypervisor::{DiskSpec, DomainSpec, DomainType};
use vmwarden::model::{DriveId, ProjectName, SecretBytes, VmId, VmName};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|b| *b == 0);
    let (Some(n), Some(p), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let (Ok(n), Ok(p), Ok(path)) = (
        std::str::from_utf8(n),
        std::str::from_utf8(p),
        std::str::from_utf8(path),
    ) else {
        return;
    };
    let (Ok(name), Ok(project)) = (VmName::parse(n), ProjectName::parse(p)) else {
        return;
    };
    let log = format!("/{path}");
    let spec = DomainSpec {
        id: VmId::new_random(),
        name,
        project,
        host: "fuzz".into(),
        vcpus: 1,
        memory_mib: 32,
        disks: vec![DiskSpec {
            drive: DriveId::new_random(),
            path: format!("/{path}.qcow2").into(),
            passphrase: SecretBytes::new(b"x".to_vec()),
        }],
        serial_log: log.clone().into(),
    };
    let Ok(xml) = domain_xml(&spec, DomainType::Qemu, &[uuid::Uuid::new_v4()]) else {
        return;
    };
    // Well-formed, and what went in comes out.
    let mut r = quick_xml::Reader::from_str(&xml);
    r.config_mut().check_end_names = true;
    let (mut depth, mut texts, mut sources) = (0i32, vec![], vec![]);
    let mut open = vec![];
    loop {
        match r.read_event().expect("well-formed XML") {
            Event::Start(e) => {
                depth += 1;
                open.push(String::from_utf8(e.name().as_ref().to_vec()).unwrap());
                sources.extend(paths(&e));
            }
            Event::End(_) => {
                depth -= 1;
                open.pop();
            }
            Event::Empty(e) => sources.extend(paths(&e)),
            Event::Text(t) => {
                if let Some(el) = open.last() {
                    texts.push((el.clone(), t.unescape().unwrap().into_owned()));
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    assert_eq!(depth, 0);
    assert!(texts.contains(&("vmwarden:name".into(), n.into())), "{xml}");
    assert!(texts.contains(&("vmwarden:project".into(), p.into())), "{xml}");
    assert!(sources.contains(&log), "{xml}");
    assert!(sources.contains(&format!("/{path}.qcow2")), "{xml}");
});

/// The `path` and `file` attributes of an element (`<source file=...>` has children, the
/// serial log's `<log file=.../>` none).
fn paths(e: &quick_xml::events::BytesStart<'_>) -> Vec<String> {
    e.attributes()
        .map(|a| a.expect("well-formed attribute"))
        .filter(|a| a.key.as_ref() == b"path" || a.key.as_ref() == b"file")
        .map(|a| a.unescape_value().unwrap().into_owned())
        .collect()
}
